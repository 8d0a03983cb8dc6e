"""Dataset preparation CLI.

    python -m qin_lightning.prepare movielens --src ml-latest-small.zip --out data/movielens \
        [--protocol sampled|rating] [--split per_user|global_time] [--holdout K] [--history positives|rated] \
        [--encoder auto|minilm|hashing] \
        [--seed N] [--max-len 64] [--negatives 3] [--cache-dir DIR] [--overwrite]

    python -m qin_lightning.prepare synthetic --out DIR [--scale tiny|small|microlens] [--seed N]

    python -m qin_lightning.prepare describe --root DIR [--json]

`movielens` converts a MovieLens release (zip or folder) into the MMCTR layout (rules in
`qin_lightning.data.movielens.convert`); `synthetic` generates the embedded default dataset (or its tiny / MicroLens-
sized variants) into a folder, as training does on first use (`qin_lightning.data.synthetic`); `describe` prints what to check first about any folder in the layout:
rows and positive rate per split, items, tags, history lengths and padding, embedding width, and the oracle AUC of a
synthetic folder (`qin_lightning.data.describe`). Errors in the input print `error: <message>` and exit with
status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from qin_lightning.errors import QinError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qin_lightning.prepare", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    ml = sub.add_parser("movielens", help="convert a MovieLens release (zip or folder) into the MMCTR layout")
    ml.add_argument("--src", required=True, help="MovieLens zip or extracted folder")
    ml.add_argument("--out", required=True, help="output folder (created atomically)")
    ml.add_argument("--protocol", choices=("sampled", "rating"), default="sampled",
                    help="sampled: ratings + N unrated negatives each (default); rating: label = rating >= 4")
    ml.add_argument("--split", choices=("per_user", "global_time"), default="per_user",
                    help="per_user: last K -> test, the K before -> valid (default); global_time: 80/10/10 by time")
    ml.add_argument("--holdout", type=int, default=1,
                    help="K of --split per_user (default 1); a user with at most 2K ratings goes to train whole")
    ml.add_argument("--history", choices=("positives", "rated"), default="positives",
                    help="items of a history: earlier positives (default) or every earlier rated item")
    ml.add_argument("--encoder", choices=("auto", "minilm", "hashing"), default="auto",
                    help="text encoder for item_emb_d128 (auto: minilm when the `text` extra is installed)")
    ml.add_argument("--seed", type=int, default=20242025, help="seed of negative sampling and the hashing encoder")
    ml.add_argument("--max-len", type=int, default=64, help="history length (left-padded / truncated)")
    ml.add_argument("--negatives", type=int, default=3, help="negatives per positive (protocol sampled)")
    ml.add_argument("--cache-dir", default=None, help="embedding cache (default $QIN_CACHE_DIR/embeddings or ~/.cache)")
    ml.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    syn = sub.add_parser("synthetic", help="generate the synthetic dataset (the default data) into a folder")
    syn.add_argument("--out", required=True, help="dataset folder to create")
    syn.add_argument("--scale", choices=("tiny", "small", "microlens"), default="small",
                     help="small: the default data of `make train`; microlens: MicroLens_1M_MMCTR's sizes")
    syn.add_argument("--seed", type=int, default=20242025)
    desc = sub.add_parser("describe", help="rows, positive rate, items, tags, history lengths of a dataset folder")
    desc.add_argument("--root", required=True, help="a folder in the MMCTR layout (e.g. .cache/qin/synthetic/<id>)")
    desc.add_argument("--json", action="store_true", help="print the description as JSON")
    return parser  # fmt: skip


def describe_main(root: str, as_json: bool) -> int:
    from qin_lightning.data.describe import describe, format_description

    try:
        desc = describe(root)
    except QinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(desc, indent=2) if as_json else format_description(desc))
    return 0


def synthetic_main(out: str, scale: str, seed: int) -> int:
    from qin_lightning.data.synthetic import SyntheticConfig, generate

    config = getattr(SyntheticConfig, scale)(seed=seed)
    try:
        path = generate(config, out)
    except QinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path} ({config.name}, fingerprint {config.fingerprint()}): {config.train_rows} train / "
          f"{config.valid_rows} valid / {config.test_rows} test rows, {config.num_items} items")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dataset == "describe":
        return describe_main(args.root, args.json)
    if args.dataset == "synthetic":
        return synthetic_main(args.out, args.scale, args.seed)
    try:
        from qin_lightning.data.movielens.convert import convert_movielens

        meta = convert_movielens(
            args.src, args.out, protocol=args.protocol, split=args.split, holdout=args.holdout, history=args.history,
            encoder=args.encoder, seed=args.seed,
            max_len=args.max_len, negatives=args.negatives, cache_dir=args.cache_dir, overwrite=args.overwrite,
        )  # fmt: skip
    except QinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = meta["counts"]
    rows = ", ".join(f"{s} {n:,}" for s, n in c["rows"].items())
    pos = ", ".join(f"{s} {p:.3f}" for s, p in c["positive_rate"].items())
    print(f"wrote {args.out}: layout {meta['layout']}, {c['users']:,} users, {c['items']:,} items, "
          f"{c['ratings']:,} ratings, tag vocab {c['tag_vocab']:,}, encoder {meta['encoder']}")  # fmt: skip
    print(f"rows: {rows}; positive rate: {pos}; {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
