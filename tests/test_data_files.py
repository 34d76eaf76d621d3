"""Data files as gift_cl.data reads them cannot run code or go wrong in silence (docs/guide/safety.md): pickled
data files are read with a restricted unpickler, every PIL mode is decoded right or refused, truncated
images are found at load time, damaged caches are regenerated, one-class tasks and tasks listed twice
are refused. Each through the loader functions the benchmark configs name, on format-exact fixtures."""
import os
import pickle
import pickletools
import re
import struct

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image, ImageFile

from gift_cl.data import procedural as P
from gift_cl.data.avalanche_classic import load_split
from gift_cl.data.base import ArrayDataset, DataError, TaskData
from gift_cl.data.fgvc import load_fgvc
from gift_cl.data.files import read_pickle
from gift_cl.data.five_datasets import load_five_datasets
from gift_cl.data.stream import build_stream
from gift_cl.data.vdd import load_vdd
from gift_cl.data.vtab import load_vtab
from gift_cl.orchestration.cli import user_error

from fixtures import (
    ID,
    write_cifar10,
    write_cifar100,
    write_fgvc,
    write_notmnist,
    write_tiny_imagenet,
    write_vdd,
    write_vtab,
)
from runs import TINY, compose_cfg, run_py

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- pickled data run no code
class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def global_call(module: str, name: str, arg: str) -> bytes:
    """A protocol-0 pickle that calls ``module.name(arg)``: the shape of every code-running pickle."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def cifar_batch(name: str) -> str:
    return {"split_cifar10": "cifar-10-batches-py/data_batch_2", "split_cifar100": "cifar-100-python/train",
            "five_datasets": "cifar-10-batches-py/test_batch"}[name]


def load_cifar(benchmark: str, root):
    """The CIFAR loaders as a run reaches them: the benchmark config, instantiated; raises the error
    ``run.py`` reports (Hydra wraps it)."""
    if benchmark == "five_datasets":
        cfg = compose_cfg("benchmark=five_datasets", f"benchmark.root={root}", "benchmark.order=[cifar10]")
    else:
        cfg = compose_cfg(f"benchmark=avalanche/{benchmark}", f"benchmark.root={root}", "model.image_size=16")
    try:
        return instantiate(cfg.benchmark)
    except InstantiationException as exc:
        raise (user_error(exc) or exc) from None


def write_cifar(benchmark: str, root) -> None:
    (write_cifar100 if benchmark == "split_cifar100" else write_cifar10)(str(root))


@pytest.mark.parametrize("benchmark", ["split_cifar10", "split_cifar100", "five_datasets"])
def test_crafted_cifar_batch_runs_no_code(tmp_path, benchmark):
    root, marker = tmp_path / "data", tmp_path / "pwned"
    write_cifar(benchmark, root)
    path = root / cifar_batch(benchmark)
    path.write_bytes(pickle.dumps({"data": Exploit(marker), "labels": [0], "fine_labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: refused to load the pickled global posix\.system"):
        load_cifar(benchmark, root)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "check_output"), ("os", "system"),
    ("numpy", "load"),  # a numpy global that is not an array rebuilder
    ("numpy.testing._private.utils", "runstring"),  # numpy's own exec gadget
    ("copyreg", "_reconstructor"), ("__builtin__", "getattr"),
])
def test_every_global_outside_the_format_is_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(global_call(module, name, f"open('{marker}', 'w')"))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: refused to load the pickled global "
                                        rf"{re.escape(module)}\.{name};"):
        read_pickle(str(path), "CIFAR-10 batch")
    assert not marker.exists()


@pytest.mark.parametrize("payload,needle", [
    (pickle.dumps({"data": np.array([print, 1], dtype=object)}, protocol=2), "object dtype"),
    (pickle.dumps({"data": b"x"}, protocol=2).replace(b"latin1", b"rot_13"), "only the latin1 encoding"),
    (b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01P1\nu.", "persistent id"),
])
def test_object_arrays_codecs_and_persistent_ids_are_refused(tmp_path, payload, needle):
    path = tmp_path / "batch"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: .*({needle})"):
        read_pickle(str(path), "CIFAR-10 batch")


def py2_cifar_pickle(data: np.ndarray, labels) -> bytes:
    """The bytes Python 2 cPickle (protocol 2) and numpy 1.x wrote for the official CIFAR batches:
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, Python 2 str."""
    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    n, d = data.shape
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(n) + i(d) + b"\x86" + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + i(0) + b"tb"
             + b"\x89" + s(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"training batch 1 of 5") + s(b"labels") + b"]("
            + b"".join(i(int(v)) for v in labels) + b"e" + s(b"data") + array + s(b"filenames") + b"](" + s(b"a.png")
            + b"eu.")


def test_official_python2_cifar_batch_reads_through_the_loader(tmp_path):
    write_cifar10(str(tmp_path))
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
        entry = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(py2_cifar_pickle(entry["data"], entry["labels"]))
    tasks = load_split("split_cifar10", str(tmp_path), n_experiences=5, class_order_seed=0, image_size=16, **ID)
    for task in tasks:
        for ds in (task.train, task.test):
            x, y = ds[0]
            original = task.info["classes"][y]
            assert abs(float(x.mean()) * 255 - (20 + 23 * original)) < 1  # fixtures.class_value


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("numpy_names", ["numpy._core", "numpy.core"])
def test_cifar_pickles_of_every_protocol_and_numpy_version_read(tmp_path, protocol, numpy_names):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    entry = {"batch_label": "b", "labels": [3, np.int64(7)], "data": data, "filenames": [b"a.png", "b.png"]}
    raw = pickle.dumps(entry, protocol=protocol)
    if numpy_names == "numpy.core":  # as numpy 1.x names its modules
        raw = _as_numpy1(raw)
    path = tmp_path / "batch"
    path.write_bytes(raw)
    back = read_pickle(str(path), "CIFAR-10 batch")
    assert np.array_equal(back["data"], data) and back["labels"] == [3, 7] and back["filenames"] == [b"a.png", "b.png"]


def _as_numpy1(raw: bytes) -> bytes:
    """``numpy._core.X`` -> ``numpy.core.X``, as numpy 1.x writes them: in GLOBAL opcodes (protocols
    0-3) and SHORT_BINUNICODE strings (4-5, whose frames are dropped first: the names get shorter)."""
    ops = list(pickletools.genops(raw))
    ends = [pos for _, _, pos in ops[1:]] + [len(raw)]
    raw = b"".join(raw[pos:end] for (op, _, pos), end in zip(ops, ends) if op.name != "FRAME")
    for module in (b"multiarray", b"numeric"):
        old, new = b"numpy._core." + module, b"numpy.core." + module
        raw = raw.replace(b"\x8c" + bytes([len(old)]) + old, b"\x8c" + bytes([len(new)]) + new)
        raw = raw.replace(old + b"\n", new + b"\n")
    assert b"numpy._core" not in raw
    return raw


def test_truncated_cifar_batch_names_the_file(tmp_path):
    write_cifar10(str(tmp_path))
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: not a CIFAR-10 python pickle"):
        load_split("split_cifar10", str(tmp_path), image_size=16, **ID)


# ----------------------------------------------------------------------------- every PIL mode
def solid(mode: str, value, size=(12, 10)) -> Image.Image:
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(np.full(size[::-1], value, dtype))
    if mode in ("P", "P+transparency"):
        img = Image.new("P", size, 1)
        img.putpalette([0, 0, 0] + list(value) + [0, 0, 0] * 254)
        if mode == "P+transparency":
            img.info["transparency"] = bytes([255, 0] + [255] * 254)  # index 1 fully transparent
        return img
    return Image.new(mode, size, value)


# mode, value written, file name, the RGB the loader must deliver (None: refused)
MODES = [
    ("1", 1, "bilevel.png", (255, 255, 255)),
    ("L", 100, "grey.png", (100, 100, 100)),
    ("LA", (100, 0), "grey_alpha.png", (100, 100, 100)),  # alpha dropped, as for RGBA
    ("P", (10, 20, 30), "palette.png", (10, 20, 30)),
    ("P+transparency", (10, 20, 30), "palette_alpha.png", (10, 20, 30)),
    ("RGBA", (10, 20, 30, 0), "rgba.png", (10, 20, 30)),
    ("RGB", (10, 20, 30), "rgb.jpg", (10, 20, 30)),
    ("CMYK", (0, 255, 255, 0), "cmyk.tif", (255, 0, 0)),
    ("CMYK", (0, 0, 0, 128), "cmyk.jpg", (127, 127, 127)),
    ("I;16", 32768, "grey16.png", (128, 128, 128)),  # PIL's convert("RGB") gives white
    ("I;16", 65535, "grey16.tif", (255, 255, 255)),
    ("I;16", 32768, "grey16.pgm", (128, 128, 128)),  # PIL opens 16-bit PGM as mode I
    ("I", 32768, "int32.tif", None),  # 32-bit integer: no defined range
    ("F", 0.5, "float.tif", None),
]


def vtab_with(root, images: dict) -> str:
    """A VTAB-1k dtd folder whose train800.txt also lists ``images`` ({relpath: PIL image}), as label 0."""
    meta = write_vtab(str(root), "dtd", num_classes=2)
    split = os.path.join(meta["dir"], "train800.txt")
    lines = open(split).read().splitlines()
    for rel, img in images.items():
        kwargs = {"quality": 95} if rel.endswith(".jpg") else {}
        img.save(os.path.join(meta["dir"], rel), **kwargs, **({"transparency": img.info["transparency"]}
                                                             if "transparency" in img.info else {}))
        lines.insert(0, f"{rel} 0")
    open(split, "w").write("\n".join(lines) + "\n")
    return meta["dir"]


@pytest.mark.parametrize("cache_decoded", [False, True])
@pytest.mark.parametrize("mode,value,name,rgb", MODES, ids=[m[2] for m in MODES])
def test_every_image_mode_is_decoded_right_or_refused(tmp_path, mode, value, name, rgb, cache_decoded):
    task_dir = vtab_with(tmp_path, {name: solid(mode, value)})
    if rgb is None:
        with pytest.raises(DataError, match=rf"{re.escape(task_dir)}/{name}: .*\(PIL mode '{mode}'\).*train800.txt"):
            load_vtab(str(tmp_path), "dtd", image_size=8, cache_decoded=cache_decoded, **ID)
        return
    (task,) = load_vtab(str(tmp_path), "dtd", image_size=8, cache_decoded=cache_decoded, **ID)
    x, y = task.train[0]
    assert task.train.relpaths[0] == name and y == 0
    got = (x * 255).mean(dim=(1, 2)).tolist()
    tolerance = 2.5 if name.endswith(".jpg") else 0.5
    assert all(abs(g - e) <= tolerance for g, e in zip(got, rgb)), (got, rgb)


def test_refused_mode_without_the_load_check_still_names_the_file(tmp_path):
    task_dir = vtab_with(tmp_path, {"float.tif": solid("F", 0.5)})
    (task,) = load_vtab(str(tmp_path), "dtd", image_size=8, verify_images=False, **ID)
    with pytest.raises(DataError, match=rf"{re.escape(task_dir)}/float.tif: 32-bit float image"):
        task.train[0]


# ----------------------------------------------------------------------------- truncated images
def truncate(path: str, keep: float = 0.6) -> str:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])
    return path


def noisy(path: str, size=(64, 48)) -> None:
    """A noisy image in the file's format: its pixel data is long, so a cut falls inside it."""
    with Image.open(path) as im:
        fmt = im.format
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def vtab_case(root):
    task_dir = write_vtab(str(root), "dtd", num_classes=2)["dir"]
    path = os.path.join(task_dir, "images", "train800", "00001.jpg")
    return lambda **kw: load_vtab(str(root), "dtd", image_size=8, **ID, **kw), path


def fgvc_case(root):
    write_fgvc(str(root), "cub", num_classes=2)
    return lambda **kw: load_fgvc(str(root), "cub", image_size=8, **ID, **kw), str(root / "images/005.class/val_0.jpg")


def vdd_case(root):
    write_vdd(str(root), {"dtd": 2})
    return lambda **kw: load_vdd(str(root), ["dtd"], image_size=8, **ID, **kw), str(root / "data/dtd/val/0000001.jpg")


def tiny_imagenet_case(root):
    wnids = write_tiny_imagenet(str(root), n_classes=2)
    return (lambda **kw: load_split("split_tiny_imagenet", str(root), n_experiences=1, image_size=8, **ID, **kw),
            str(root / f"tiny-imagenet-200/train/{wnids[1]}/images/{wnids[1]}_2.JPEG"))


def notmnist_case(root):
    write_notmnist(str(root))
    return (lambda **kw: load_five_datasets(str(root), order=["notmnist"], **ID, **kw),
            str(root / "notMNIST/test/C/img0_C.png"))


@pytest.mark.parametrize("case", [vtab_case, fgvc_case, vdd_case, tiny_imagenet_case, notmnist_case])
@pytest.mark.parametrize("cache_decoded", [False, True])
def test_truncated_image_stops_the_load_naming_the_file(tmp_path, monkeypatch, case, cache_decoded):
    load, path = case(tmp_path)
    noisy(path)
    truncate(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as another library may have set it
    with pytest.raises(DataError, match=rf"{re.escape(path)}: (not a readable|cannot decode) image .*truncated"):
        load(verify_images=True, cache_decoded=cache_decoded)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the setting is put back


def test_truncated_image_is_never_delivered_grey(tmp_path, monkeypatch):
    load, path = vtab_case(tmp_path)
    noisy(path)
    truncate(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    (task,) = load(verify_images=False)
    index = task.train.relpaths.index("images/train800/00001.jpg")
    with pytest.raises(DataError, match=rf"{re.escape(path)}: cannot decode image .*truncated"):
        task.train[index]


# ----------------------------------------------------------------------------- procedural cache
@pytest.mark.parametrize("damage", ["truncated", "bad_crc", "object_array"])
def test_damaged_procedural_cache_is_regenerated_with_a_warning(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("GIFT_CL_CACHE", str(tmp_path / "cache"))
    x, y = P.generate("digits", 20, image_size=16)
    (path,) = (tmp_path / "cache" / "procedural").glob("*.npz")
    marker = tmp_path / "pwned"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "bad_crc":  # the archive's directory intact, the images' bytes damaged
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    else:
        with open(path, "wb") as f:
            np.savez(f, images=np.array([Exploit(marker)], dtype=object), labels=y)
    with pytest.warns(UserWarning, match=rf"unreadable cache file {re.escape(str(path))}"):
        x2, y2 = P.generate("digits", 20, image_size=16)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and not marker.exists()
    with np.load(path) as z:  # repaired
        assert np.array_equal(z["images"], x)


# ----------------------------------------------------------------------------- one-class tasks
def arrays(labels):
    return ArrayDataset(np.zeros((len(labels), 4, 4, 3), np.uint8), labels)


@pytest.mark.parametrize("num_classes", [1, 0, -3, True, 2.5])
def test_task_with_fewer_than_two_classes_is_refused(num_classes):
    with pytest.raises(DataError, match=r"task 'solo': num_classes=.*at least 2 classes"):
        TaskData("solo", arrays([0, 0]), arrays([0]), num_classes)


def test_task_whose_train_split_holds_one_class_is_refused():
    with pytest.raises(DataError, match=r"task 'mono': every train label is 1 although the task has 3 classes"):
        TaskData("mono", arrays([1, 1, 1]), arrays([0, 1, 2]), 3)
    TaskData("ok", arrays([0, 1]), arrays([1]), 3)  # a test split may lack classes (NABirds val does)


def test_one_class_task_from_a_loader_is_refused(tmp_path):
    write_fgvc(str(tmp_path), "cub", num_classes=1)
    with pytest.raises(DataError, match="task 'cub': num_classes=1"):
        load_fgvc(str(tmp_path), "cub", image_size=8, **ID)
    write_vdd(str(tmp_path / "vdd"), {"dtd": 1})
    with pytest.raises(DataError, match="task 'dtd': num_classes=1"):
        load_vdd(str(tmp_path / "vdd"), ["dtd"], image_size=8, **ID)


# ----------------------------------------------------------------------------- a task listed twice
def test_stream_refuses_duplicate_task_names_whatever_the_benchmark():
    tasks = [TaskData(n, arrays([0, 1]), arrays([0, 1]), 2) for n in ("a", "b", "a", "c", "c")]
    with pytest.raises(DataError, match=r"task names: duplicate 'a', 'c' in \['a', 'b', 'a', 'c', 'c'\]"):
        build_stream(tasks)


def test_loaders_refuse_duplicates_before_reading_any_data(tmp_path):
    (tmp_path / "annotations").mkdir()  # no domain files: reading any would fail differently
    with pytest.raises(DataError, match=r"benchmark.domains: duplicate 'dtd'"):
        load_vdd(str(tmp_path), ["dtd", "aircraft", "dtd"])
    with pytest.raises(DataError, match=r"benchmark.order: duplicate 'svhn'"):
        load_five_datasets(str(tmp_path), order=["svhn", "mnist", "svhn"])
    with pytest.raises(DataError, match=r"procedural: benchmark.domains: duplicate 'digits'"):
        P.load_procedural(["digits", "digits"], n_train=4, n_test=4)


def test_run_with_a_domain_listed_twice_stops_with_one_line(tmp_path):
    root = tmp_path / "vdd"
    write_vdd(str(root), {"dtd": 2})
    proc = run_py(*TINY, "benchmark=vdd", f"benchmark.root={root}", "benchmark.domains=[dtd,dtd]",
                  f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: DataError: benchmark.domains: duplicate 'dtd' in ['dtd', 'dtd']; every task of a "
                      "stream needs its own name: list each once"]
    assert not (tmp_path / "run" / "results.json").exists()
