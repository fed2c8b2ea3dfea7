"""Write the MNIST subset that ships inside the package (xpcnn/datasets/mnist_subset/).

    python tools/make_bundled_mnist.py ../shared/data/mnist

Takes the first 10,000 training and the first 2,000 test records of the canonical files, keeps
the IDX format (so the same reader and checks apply), gzips them reproducibly (mtime 0) and
prints the SHA-256 of each decompressed file for xpcnn/data/mnist.py's BUNDLED_SHA256.
"""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import struct
import sys

SUBSET = {"train": 10_000, "t10k": 2_000}
OUT = pathlib.Path(__file__).resolve().parents[1] / "xpcnn" / "datasets" / "mnist_subset"


def main(source: str) -> None:
    for split, count in SUBSET.items():
        for kind, header_size, record in (("images", 16, 28 * 28), ("labels", 8, 1)):
            name = f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            raw = gzip.decompress((pathlib.Path(source) / f"{name}.gz").read_bytes())
            header = bytearray(raw[:header_size])
            struct.pack_into(">I", header, 4, count)          # the record count follows the magic number
            data = bytes(header) + raw[header_size:header_size + count * record]
            with open(OUT / f"{name}.gz", "wb") as handle:
                with gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0, compresslevel=9) as gz:
                    gz.write(data)
            print(f'    "{name}": "{hashlib.sha256(data).hexdigest()}",')


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mnist")
