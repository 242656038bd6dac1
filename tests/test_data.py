"""harness.engine.data on the real datasets, on files written in the official formats,
and on tensorflow-datasets builders prepared locally."""

import gzip
import hashlib
import http.server
import io
import shutil
import sys
import tarfile
import threading

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from harness.engine import data
from harness.engine.data import load_dataset
from harness.errors import UserError

# Class counts of the full official training sets (../shared/data/README.md).
TRAIN_CLASS_COUNTS = {
    "mnist": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "fashion_mnist": [6000] * 10,
}


def _raw_idx(path, header):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read()[header:], np.uint8)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets_split_as_shallue(data_dir, name):
    ds = load_dataset(name, data_dir)
    assert ds.train_x.shape == (55_000, 28, 28, 1) and ds.val_x.shape == (5_000, 28, 28, 1)
    assert ds.train_x.dtype == ds.val_x.dtype == np.float32
    assert ds.train_y.dtype == ds.val_y.dtype == np.int32 and ds.num_classes == 10
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    assert ds.val_x.min() == 0.0 and ds.val_x.max() == 1.0

    labels = _raw_idx(data_dir / name / "train-labels-idx1-ubyte.gz", 8)
    assert labels.shape == (60_000,)
    np.testing.assert_array_equal(np.bincount(ds.val_y, minlength=10), np.bincount(labels[-5000:], minlength=10))
    np.testing.assert_array_equal(ds.train_y, labels[:55_000])
    all_labels = np.concatenate([ds.train_y, ds.val_y])
    assert np.bincount(all_labels).tolist() == TRAIN_CLASS_COUNTS[name]

    pixels = _raw_idx(data_dir / name / "train-images-idx3-ubyte.gz", 16).reshape(60_000, 28, 28)
    np.testing.assert_array_equal(np.rint(ds.val_x[-1, :, :, 0] * 255), pixels[-1])
    np.testing.assert_array_equal(np.rint(ds.train_x[0, :, :, 0] * 255), pixels[0])
    np.testing.assert_array_equal(np.rint(ds.val_x[0, :, :, 0] * 255), pixels[55_000])


def test_parsed_arrays_are_cached_and_read_only(data_dir):
    ds = load_dataset("mnist", data_dir)
    assert load_dataset("mnist", str(data_dir)) is ds
    with pytest.raises(ValueError, match="read-only"):
        ds.train_x[0, 0, 0, 0] = 0.5


def test_data_dir_comes_from_the_environment(data_dir, monkeypatch):
    monkeypatch.setenv("CBS_DATA_DIR", str(data_dir))
    assert load_dataset("mnist") is load_dataset("mnist", data_dir)


def test_shakespeare_split_and_decode_round_trip(data_dir):
    text = (data_dir / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    ds = load_dataset("tiny_shakespeare", data_dir)
    assert ds.vocabulary == "".join(sorted(set(text))) and ds.num_classes == len(ds.vocabulary) == 65
    assert ds.train_x.shape == ds.train_y.shape == (split // 65, 64)
    assert ds.val_x.shape == ds.val_y.shape == ((len(text) - split) // 65, 64)
    assert ds.train_x.dtype == ds.val_y.dtype == np.int32

    def decode(ids):
        return "".join(ds.vocabulary[i] for i in ids)

    assert decode(ds.train_x[0]) == text[:64] and decode(ds.train_y[0]) == text[1:65]
    assert decode(ds.train_x[1]) == text[65:129]
    last = len(ds.train_x) - 1
    assert decode(ds.train_y[last]) == text[65 * last + 1 : 65 * last + 65]
    assert decode(ds.val_x[0]) == text[split : split + 64] and decode(ds.val_y[0]) == text[split + 1 : split + 65]

    short = load_dataset("tiny_shakespeare", data_dir, seq_len=8)
    assert short.train_x.shape == (split // 9, 8) and decode(short.val_y[2]) == text[split + 19 : split + 27]


@pytest.mark.parametrize(
    "name, options, message",
    [
        (
            "imagenet",
            {},
            "unknown dataset 'imagenet'; allowed: mnist, fashion_mnist, tiny_shakespeare, cifar10, tfds:<name>",
        ),
        ("mnist", {"seq_len": 8}, "dataset 'mnist' has no option(s) seq_len; allowed: none"),
        ("tiny_shakespeare", {"seq_length": 8}, "has no option(s) seq_length; allowed: seq_len"),
        ("tiny_shakespeare", {"seq_len": 0}, "seq_len must be a positive integer, got 0"),
    ],
)
def test_bad_dataset_arguments(data_dir, name, options, message):
    with pytest.raises(UserError) as e:
        load_dataset(name, data_dir, **options)
    assert message in str(e.value)


def test_cifar10_from_the_official_binary_format(tmp_path, monkeypatch):
    """Five data_batch files of 1,100 records each in the official format, in
    the official archive layout: record g has label g % 10 and one pixel of
    value 200 in channel g % 3 at row (g // 3) % 32, column (g // 7) % 32."""
    g = np.arange(5 * 1100)
    channel, row, col = g % 3, (g // 3) % 32, (g // 7) % 32
    records = np.zeros((len(g), 1 + 3072), np.uint8)
    records[:, 0] = g % 10
    records[g, 1 + channel * 1024 + row * 32 + col] = 200  # R, G, B planes, each row-major
    archive = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for i, batch in enumerate(np.split(records, 5), start=1):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/data_batch_{i}.bin")
            info.size = batch.nbytes
            tar.addfile(info, io.BytesIO(batch.tobytes()))
    url, _ = data.FILES["cifar10/cifar-10-binary.tar.gz"]
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data.FILES, "cifar10/cifar-10-binary.tar.gz", (url, f"md5:{md5}"))

    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (500, 32, 32, 3) and ds.val_x.shape == (5000, 32, 32, 3)
    assert ds.train_x.dtype == np.float32 and ds.num_classes == 10
    assert (tmp_path / "cifar10" / "cifar-10-batches-bin" / "data_batch_5.bin").stat().st_size == 1100 * 3073
    x = np.concatenate([ds.train_x, ds.val_x])
    np.testing.assert_array_equal(np.concatenate([ds.train_y, ds.val_y]), g % 10)
    np.testing.assert_allclose(x[g, row, col, channel], 200 / 255, rtol=1e-6)
    np.testing.assert_allclose(x.sum(axis=(1, 2, 3)), 200 / 255, rtol=1e-6)


def test_corrupted_file_names_file_and_expected_checksum(data_dir, tmp_path):
    (tmp_path / "mnist").mkdir()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copyfile(data_dir / "mnist" / f, tmp_path / "mnist" / f)
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(labels.read_bytes())
    raw[1000] ^= 0xFF
    labels.write_bytes(raw)
    with pytest.raises(UserError) as e:
        load_dataset("mnist", tmp_path)
    message = str(e.value)
    assert f"{labels} is not the official mnist/train-labels-idx1-ubyte.gz" in message
    assert f"its sha256 is {hashlib.sha256(raw).hexdigest()}" in message
    assert "expected 3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c" in message
    assert f"the data folder is {tmp_path} (choose it with --data-dir or the CBS_DATA_DIR" in message
    assert "\n" not in message


@pytest.fixture
def mirror(monkeypatch):
    """A local HTTP proxy that answers requests for the URLs in its dict; all
    other downloads are refused. Requests (under pooch) honours http_proxy."""
    files = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path not in files:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(files[self.path])))
            self.end_headers()
            self.wfile.write(files[self.path])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{server.server_port}")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield files
    server.shutdown()
    server.server_close()


def test_missing_file_without_network_says_where_files_go(tmp_path, mirror):
    with pytest.raises(UserError) as e:
        load_dataset("tiny_shakespeare", tmp_path)
    message = str(e.value)
    assert message.startswith(
        "tiny_shakespeare/input.txt is missing and its download from "
        "https://raw.githubusercontent.com/karpathy/char-rnn/"
    )
    assert (
        "put the official file (sha256 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed) "
        f"at {tmp_path / 'tiny_shakespeare' / 'input.txt'}"
    ) in message
    assert f"the data folder is {tmp_path} (choose it with --data-dir or the CBS_DATA_DIR" in message
    assert not (tmp_path / "tiny_shakespeare" / "input.txt").exists()


def test_mnist_ships_with_the_package_and_loads_offline(data_dir, tmp_path, mirror):
    """An empty data folder and no network: MNIST comes from the shipped
    official files (the quickstart's data), identical to the official ones."""
    ds = load_dataset("mnist", tmp_path)
    official = load_dataset("mnist", data_dir)
    np.testing.assert_array_equal(ds.train_x, official.train_x)
    np.testing.assert_array_equal(ds.val_y, official.val_y)
    assert not mirror and not any(tmp_path.iterdir())  # nothing downloaded, nothing written
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert (data.SHIPPED / "mnist" / f).read_bytes() == (data_dir / "mnist" / f).read_bytes()


def test_missing_files_are_downloaded_once_and_verified(data_dir, tmp_path, mirror):
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        url, _ = data.FILES[f"fashion_mnist/{f}"]
        mirror[url] = (data_dir / "fashion_mnist" / f).read_bytes()
    ds = load_dataset("fashion_mnist", tmp_path)
    official = load_dataset("fashion_mnist", data_dir)
    np.testing.assert_array_equal(ds.val_x, official.val_x)
    np.testing.assert_array_equal(ds.train_y, official.train_y)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert (tmp_path / "fashion_mnist" / f).read_bytes() == (data_dir / "fashion_mnist" / f).read_bytes()

    mirror.clear()  # a second load in a fresh process finds the files: no download
    data._load.cache_clear()
    np.testing.assert_array_equal(load_dataset("fashion_mnist", tmp_path).val_y, official.val_y)


def test_a_download_that_mismatches_is_refused(data_dir, tmp_path, mirror):
    url, _ = data.FILES["fashion_mnist/train-labels-idx1-ubyte.gz"]
    mirror[url] = b"not the labels"
    (tmp_path / "fashion_mnist").mkdir()
    shutil.copyfile(
        data_dir / "fashion_mnist" / "train-images-idx3-ubyte.gz",
        tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz",
    )
    with pytest.raises(
        UserError,
        match=r"fashion_mnist/train-labels-idx1-ubyte.gz is missing and its download "
        r"from http://fashion-mnist\S+ failed \(ValueError\): put the official file "
        r"\(sha256 a04f17134ac0",
    ):
        load_dataset("fashion_mnist", tmp_path)
    assert not (tmp_path / "fashion_mnist" / "train-labels-idx1-ubyte.gz").exists()


# --- tensorflow-datasets: builders defined here, prepared into tmp_path -------------


def _png(value):
    f = io.BytesIO()
    PIL.Image.fromarray(np.full((4, 4), value, np.uint8)).save(f, format="PNG")
    return f.getvalue()


class _TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Image i is 4x4x1 of value 10 * i with label i % 3; images arrive as PNG
    bytes, which tfds stores without TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS = {"train": range(20)}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=3)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(ids) for split, ids in self.SPLITS.items()}

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {"image": io.BytesIO(_png(10 * i)), "label": i % 3}


class CbsTrainOnly(_TinyImages):
    pass


class CbsTrainValidation(_TinyImages):
    SPLITS = {"train": range(16), "validation": range(16, 20), "test": range(20, 25)}


class CbsNumpyImages(_TinyImages):
    """Images as arrays: tfds needs TensorFlow to encode them as PNG."""

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {"image": np.full((4, 4, 1), 10 * i, np.uint8), "label": i % 3}


def _ids(x, y):
    """Example ids from the pixel values, checked against the labels."""
    ids = np.rint(x[:, 0, 0, 0] * 255).astype(int) // 10
    np.testing.assert_allclose(x, np.broadcast_to(ids[:, None, None, None] * 10 / 255, x.shape), rtol=1e-6)
    np.testing.assert_array_equal(y, ids % 3)
    return sorted(ids)


def test_tfds_uses_the_validation_split(tmp_path):
    ds = load_dataset("tfds:cbs_train_validation", tmp_path)
    assert ds.train_x.shape == (16, 4, 4, 1) and ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    assert ds.num_classes == 3
    assert _ids(ds.train_x, ds.train_y) == list(range(16))
    assert _ids(ds.val_x, ds.val_y) == list(range(16, 20))


def test_tfds_without_validation_split_validates_on_last_tenth_of_train(tmp_path):
    ds = load_dataset("tfds:cbs_train_only", tmp_path)
    assert len(ds.train_x) == 18 and len(ds.val_x) == 2
    assert sorted(_ids(ds.train_x, ds.train_y) + _ids(ds.val_x, ds.val_y)) == list(range(20))
    source = tfds.builder("cbs_train_only", data_dir=str(tmp_path)).as_data_source(split="train")
    last = [int(e["image"][0, 0, 0]) // 10 for e in list(source)[18:]]
    assert _ids(ds.val_x, ds.val_y) == sorted(last)


def test_tfds_catalogue_dataset_with_tfds_mock_data(tmp_path):
    """tfds's own test facility serves random examples with the real MNIST
    builder's features, without TensorFlow or a network (it ignores split
    slicing: each split has num_examples)."""
    with tfds.testing.mock_data(num_examples=20):
        ds = load_dataset("tfds:mnist", tmp_path)
    assert ds.train_x.shape == ds.val_x.shape == (20, 28, 28, 1)
    assert ds.num_classes == 10 and 0 <= ds.train_x.min() and ds.train_x.max() <= 1


def test_tfds_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown tensorflow-datasets dataset 'no_such_dataset'; see https"):
        load_dataset("tfds:no_such_dataset", tmp_path)
    with pytest.raises(UserError, match="'tfds:lm1b' has features text; tfds datasets need 'image' and 'label'"):
        load_dataset("tfds:lm1b", tmp_path)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # TensorFlow not installed
    with pytest.raises(
        UserError,
        match=r"^dataset 'tfds:cbs_numpy_images' needs TensorFlow to be built, prepared "
        r"or read from .* \(.*tensorflow.*\): pip install tensorflow$",
    ):
        load_dataset("tfds:cbs_numpy_images", tmp_path)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # tensorflow-datasets not installed
    with pytest.raises(
        UserError,
        match=r"^dataset 'tfds:cifar10' needs tensorflow-datasets: "
        r"pip install 'critical-batch-size\[tfds\]'$",
    ):
        load_dataset("tfds:cifar10", tmp_path)
