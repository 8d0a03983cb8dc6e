"""Model parts: item encoder, target attention, interaction networks (QNN, QNN-alpha, MLP), QIN, the DIN baseline
and the challenge winner (Transformer + DCNv2)."""
