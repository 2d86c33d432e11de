"""Small CIFAR-10, CIFAR-100 and TinyImageNet folders written in the official file formats.

The real datasets are not available offline, so the readers are tested on files made here
exactly as the official releases lay them out: Python pickles with bytes keys and a uint8
[N, 3072] plane-major `data` array (CIFAR), JPEG folders with wnids.txt and
val_annotations.txt (TinyImageNet). Each writer returns the NHWC images and labels it wrote.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 [N, 32, 32, 3] -> the files' rows: [N, 3072] = R plane, G plane, B plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_pickle(path: Path, content: dict) -> None:
    # Protocol 2 and bytes keys, as the official files (pickled by Python 2) have.
    path.write_bytes(pickle.dumps(content, protocol=2))


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0):
    """<root>/cifar-10-batches-py with 5 training batches of `per_batch` images and a test batch.

    Labels cycle through the 10 classes, so every class appears once `per_batch` >= 10.
    Returns (train_x, train_y, test_x, test_y) as the reader should give them."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = [(j + i) % 10 for j in range(per_batch)]
        write_pickle(
            folder / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": y,
                b"data": cifar_rows(x),
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            },
        )
        train.append((x, y))
    test_x = rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8)
    test_y = [j % 10 for j in range(test)]
    write_pickle(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_y,
            b"data": cifar_rows(test_x),
            b"filenames": [b"t.png"] * test,
        },
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(
        folder / "batches.meta",
        {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
    )
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train]).astype(np.int32)
    return train_x, train_y, test_x, np.array(test_y, np.int32)


def write_cifar100(root: Path, train: int = 200, test: int = 100, seed: int = 0):
    """<root>/cifar-100-python with `train`/`test` images; fine labels cycle through 100
    classes, coarse labels are fine // 5. Returns (train_x, fine train_y, test_x, fine test_y)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = []
    for split, n in (("train", train), ("test", test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = [(7 * j) % 100 for j in range(n)]
        write_pickle(
            folder / split,
            {
                b"filenames": [b"f.png"] * n,
                b"batch_label": split.encode(),
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"data": cifar_rows(x),
            },
        )
        out += [x, np.array(fine, np.int32)]
    write_pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        },
    )
    return tuple(out)


def write_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if image.ndim == 2 else "RGB"
    # quality 95 without chroma subsampling: decoded values stay within a few levels.
    Image.fromarray(image, mode).save(path, "JPEG", quality=95, subsampling=0)


def quadrant_image(colours) -> np.ndarray:
    """64x64x3 with four solid 32x32 quadrants: top-left, top-right, bottom-left, bottom-right."""
    image = np.zeros((64, 64, 3), np.uint8)
    for (r, c), colour in zip([(0, 0), (0, 1), (1, 0), (1, 1)], colours):
        image[32 * r : 32 * (r + 1), 32 * c : 32 * (c + 1)] = colour
    return image


def write_tiny_imagenet(
    root: Path,
    num_classes: int = 3,
    train_per_class: int = 2,
    val_per_class: int = 1,
    seed: int = 0,
):
    """<root>/tiny-imagenet-200 with `num_classes` wnids (in a non-sorted order).

    Image k of a class is a quadrant image whose colours encode (class, k), so a test can tell
    any two apart; val images are listed in val_annotations.txt with their wnid and a box.
    Returns (wnids, train_x, train_y, val_x, val_y) as written (before JPEG rounding)."""
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    wnids = [
        f"n{(10_000_000 - 7919 * i) % 10_000_000:08d}" for i in range(num_classes)
    ]  # not sorted
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train_x, train_y = [], []
    for label, wnid in enumerate(wnids):
        (folder / "train" / wnid).mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # boxes: not read
        for k in range(train_per_class):
            image = quadrant_image(rng.integers(20, 236, (4, 3)))
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", image)
            train_x.append(image)
            train_y.append(label)
    lines, val_x, val_y = [], [], []
    for i in range(num_classes * val_per_class):
        label = (i * 5 + 1) % num_classes
        image = quadrant_image(rng.integers(20, 236, (4, 3)))
        write_jpeg(folder / "val" / "images" / f"val_{i}.JPEG", image)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t3\t60\t61")
        val_x.append(image)
        val_y.append(label)
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return (
        wnids,
        np.stack(train_x),
        np.array(train_y, np.int32),
        np.stack(val_x),
        np.array(val_y, np.int32),
    )
