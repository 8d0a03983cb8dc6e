"""Model parts: item encoder, target attention, interaction networks, QIN and the DIN baseline."""
