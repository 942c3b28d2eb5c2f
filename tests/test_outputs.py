"""pacegeo.io.outputs: output checks against inputs, and output sets that appear whole or not at all."""

import os
from pathlib import Path

import pytest

from pacegeo.errors import OutputError
from pacegeo.io.outputs import TEMP_NAME_EXTRA, OutputSet, OutputSpec, atomic_write, check_outputs


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a.png").write_bytes(b"photo")
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "output, kind, fragment",
    [
        ("frames", "folder", "is the input"),
        ("frames/a.png", "file", "inside the input folder"),
        ("frames/new.ply", "file", "inside the input folder"),
        (".", "folder", "contains the input"),
    ],
)
def test_an_output_that_is_inside_or_contains_an_input_is_refused_even_with_overwrite(work, output, kind, fragment):
    spec = OutputSpec(work / output, kind=kind)
    with pytest.raises(OutputError, match=fragment):
        check_outputs([spec], [work / "frames"], overwrite=True)
    assert files(work) == {"frames/a.png": b"photo"}


def test_a_link_to_an_input_is_the_input(work):
    os.symlink(work / "frames" / "a.png", work / "out" / "link.png")
    with pytest.raises(OutputError, match="input"):
        check_outputs([OutputSpec(work / "out" / "link.png")], [work / "frames" / "a.png"], overwrite=True)


def test_names_need_room_for_their_temporary_name(work):
    limit = os.pathconf(work, "PC_NAME_MAX")
    fits = "a" * (limit - TEMP_NAME_EXTRA - 4) + ".ply"
    too_long = "a" * (limit - TEMP_NAME_EXTRA - 3) + ".ply"
    check_outputs([OutputSpec(work / "out" / fits)])
    with pytest.raises(OutputError, match="too long"):
        check_outputs([OutputSpec(work / "out" / too_long)])


def test_two_outputs_in_one_place_and_an_output_inside_another_are_refused(work):
    with pytest.raises(OutputError, match="both be written"):
        check_outputs([OutputSpec(work / "out" / "a.ply"), OutputSpec(work / "out" / "a.ply", what="copy")])
    (work / "out" / "col").mkdir()  # an earlier export, replaced as a whole: the preview would go with it
    with pytest.raises(OutputError, match="lies inside"):
        check_outputs([OutputSpec(work / "out" / "col", kind="folder"), OutputSpec(work / "out" / "col" / "p.png")], overwrite=True)


def test_a_set_appears_only_when_every_output_is_written(work):
    specs = [OutputSpec(work / "out" / "a.txt"), OutputSpec(work / "out" / "b", kind="folder")]
    with pytest.raises(RuntimeError):
        with OutputSet(specs) as outputs:
            outputs.staged(specs[0]).write_bytes(b"A")
            raise RuntimeError("second writer failed")
    assert list((work / "out").iterdir()) == []
    with OutputSet(specs) as outputs:
        outputs.staged(specs[0]).write_bytes(b"A")
        (outputs.staged(specs[1]) / "x.txt").write_bytes(b"X")
    assert files(work / "out") == {"a.txt": b"A", "b/x.txt": b"X"}


def test_a_failure_while_moving_into_place_restores_the_previous_files(work, monkeypatch):
    out = work / "out"
    (out / "a.txt").write_bytes(b"old a")
    (out / "b.txt").write_bytes(b"old b")
    specs = [OutputSpec(out / "a.txt"), OutputSpec(out / "b.txt")]
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out / "b.txt" and ".tmp" in Path(src).name:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match="nothing was replaced"):
        with OutputSet(specs, overwrite=True) as outputs:
            outputs.staged(specs[0]).write_bytes(b"new a")
            outputs.staged(specs[1]).write_bytes(b"new b")
    assert files(out) == {"a.txt": b"old a", "b.txt": b"old b"}
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]


def test_memory_and_disk_errors_while_writing_become_one_output_error(work):
    spec = OutputSpec(work / "out" / "a.txt")
    for error in (MemoryError(), OSError(28, "No space left on device")):
        with pytest.raises(OutputError, match="nothing was written"):
            with OutputSet([spec]) as outputs:
                outputs.staged(spec).write_bytes(b"partial")
                raise error
    assert list((work / "out").iterdir()) == []


def test_atomic_write_replaces_a_file_but_not_an_input(work):
    with atomic_write(work / "out" / "a.txt") as handle:
        handle.write(b"one")
    with atomic_write(work / "out" / "a.txt") as handle:
        handle.write(b"two")
    assert files(work / "out") == {"a.txt": b"two"}
    with pytest.raises(OutputError, match="input"):
        with atomic_write(work / "frames" / "a.png", inputs=[work / "frames"]) as handle:
            handle.write(b"overwritten")
    assert (work / "frames" / "a.png").read_bytes() == b"photo"


def test_save_tensors_writes_detached_cpu_tensors_and_leaves_nothing_when_it_fails(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pacegeo.io.outputs import save_tensors

    weight = torch.arange(6.0).reshape(2, 3).t().requires_grad_()  # non-contiguous, needs grad
    path = save_tensors({"w": weight}, tmp_path / "new" / "x.safetensors", {"format": "test"})
    assert path == tmp_path / "new" / "x.safetensors"
    torch.testing.assert_close(load_file(str(path))["w"], weight.detach())
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "test"}
    with pytest.raises(Exception):
        save_tensors({"w": weight}, path, {"format": 1})  # metadata values must be strings
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.safetensors"]  # old file kept, no temporary left
    torch.testing.assert_close(load_file(str(path))["w"], weight.detach())
