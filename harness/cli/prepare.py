"""`cbs prepare DATASET`: write a dataset once as .npy files under
`<data folder>/prepared/` (harness.engine.records), from which trials read
it without loading it and stream it when it does not fit in device memory
(harness.engine.stream). A tfds dataset (`tfds:<name>`, prepared offline in
the data folder) is copied a block of rows at a time."""

from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("dataset", help="a dataset of harness.engine.data (mnist, tiny_shakespeare, tfds:<name>, ...)")
    parser.add_argument("--data-dir", help="the data folder (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument("--out", help="the folder to write (default: <data folder>/prepared/<dataset>)")
    parser.add_argument("--seq-len", type=int, help="tiny_shakespeare's window length (default: 64)")


def run(args) -> int:
    from harness.engine.data import open_prepared, prepare

    options = {} if args.seq_len is None else {"seq_len": args.seq_len}
    folder = prepare(args.dataset, args.data_dir, args.out, **options)
    data = open_prepared(folder)
    size = sum(a.nbytes for a in (data.train_x, data.train_y, data.val_x, data.val_y))
    print(f"{folder}: {len(data.train_x)} training and {len(data.val_x)} validation examples, {size / 1e6:.1f} MB")
    return 0
