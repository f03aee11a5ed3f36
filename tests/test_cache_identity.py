"""Cached predictions are reused only for the same data and the same model: file content
fingerprints (remembered across runs), model identities from the checkpoint or the server, and the
line and tag of a rerun that reuses."""

from __future__ import annotations

import json
import os
import shutil

import mlflow
import pytest

from tests.conftest import compose_config
from tests.fake_servers import FakeServer
from tests.test_runner import eval_overrides
from vlmexp.content import HashCache, data_fingerprint
from vlmexp.models.identity import checkpoint_identity
from vlmexp.runner import run

QWEN_TAG, QWEN_ID = "qwen2.5vl:7b", "Qwen/Qwen2.5-VL-7B-Instruct"


def runs_of(experiment="smoke"):
    return sorted(mlflow.search_runs(experiment_names=[experiment], output_format="list"),
                  key=lambda r: r.info.start_time)


# -- data content ---------------------------------------------------------------------------------
def test_data_fingerprint_is_remembered_and_sees_changed_content(tmp_path):
    root = tmp_path / "frames"
    for seq in range(20):
        (root / f"seq{seq}").mkdir(parents=True)
        for k in range(50):
            stem = root / f"seq{seq}" / f"f{k:03d}"
            stem.with_suffix(".jpg").write_bytes(bytes([seq, k]) * 300)
            stem.with_suffix(".txt").write_text(f"0 0.5 0.5 0.{k % 9 + 1} 0.2\n")
    cache_file = tmp_path / "cache" / "content_hashes.json"
    data = {"root": str(root)}

    first = HashCache(cache_file)
    fingerprint = data_fingerprint(data, [], first)
    assert (first.hits, first.misses) == (0, 2000)
    again = HashCache(cache_file)
    assert data_fingerprint(data, [], again) == fingerprint
    assert (again.hits, again.misses) == (2000, 0)  # nothing read a second time

    image = root / "seq3" / "f007.jpg"
    image.write_bytes(bytes([99, 7]) * 300)  # same size, other pixels
    changed = HashCache(cache_file)
    image_changed = data_fingerprint(data, [], changed)
    assert image_changed != fingerprint
    assert (changed.hits, changed.misses) == (1999, 1)

    label = root / "seq3" / "f008.txt"
    label.write_text(label.read_text().replace("0 0.5", "0 0.6"))  # a moved box, same size
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert data_fingerprint(data, [], HashCache(cache_file)) not in {fingerprint, image_changed}


def test_big_files_are_hashed_by_samples(tmp_path):
    from vlmexp.content import file_hash

    path = tmp_path / "video.mp4"
    blob = bytearray(os.urandom(1 << 20))
    path.write_bytes(bytes(blob))
    before = file_hash(path, len(blob))
    blob[0] ^= 1
    path.write_bytes(bytes(blob))
    assert file_hash(path, len(blob)) != before


@pytest.fixture
def smoke_copy(cache_dir, tmp_path):
    """The generated smoke test split, copied where a test may replace its files."""
    from vlmexp.data.synthetic_smoke import generate_smoke_dataset

    root = tmp_path / "smoke"
    shutil.copytree(generate_smoke_dataset(str(cache_dir))["test"], root)
    return root


def test_changed_images_under_the_same_root_are_evaluated_again(smoke_copy, cache_dir, tmp_path, caplog):
    caplog.set_level("INFO")
    calls = tmp_path / "calls.log"
    overrides = eval_overrides(cache_dir, tmp_path, f"data.root={smoke_copy}")
    run(compose_config([*overrides, "data.limit=4"]), output_dir=tmp_path / "a")
    assert len(calls.read_text().splitlines()) == 4
    run(compose_config([*overrides, "data.limit=6"]), output_dir=tmp_path / "b")
    assert len(calls.read_text().splitlines()) == 6  # a larger limit reuses the 4 done
    assert "reusing 4 of 6 predictions from" in caplog.text

    images = sorted(p for p in smoke_copy.rglob("*") if p.suffix in {".jpg", ".png"})
    shutil.copyfile(images[1], images[0])  # another picture under the same name
    caplog.clear()
    run(compose_config([*overrides, "data.limit=6"]), output_dir=tmp_path / "c")
    assert len(calls.read_text().splitlines()) == 12  # all six asked again
    assert "the data changed" in caplog.text and "reusing 6 of 6" not in caplog.text
    first, second, third = runs_of()
    assert first.info.run_id != third.info.run_id and second.info.run_id != third.info.run_id
    assert first.data.tags["vlmexp.data_fingerprint"] != third.data.tags["vlmexp.data_fingerprint"]


# -- model identity -------------------------------------------------------------------------------
def ollama_eval(cache_dir, server, *extra):
    return compose_config(["task=smoke", "model=qwen7b", "mode=eval", f"paths.cache_dir={cache_dir}",
                           "data.limit=3", "engine=ollama", f"engine.host={server.ollama_host}", *extra])


def test_other_weights_behind_the_same_tag_are_not_reused(cache_dir, tmp_path, caplog):
    caplog.set_level("INFO")
    with FakeServer(models=[QWEN_TAG], digest="a" * 64) as first:
        run(ollama_eval(cache_dir, first, "resume=false"), output_dir=tmp_path / "a")
        assert len(first.chats) == 3
    with FakeServer(models=[QWEN_TAG], digest="b" * 64) as second:
        run(ollama_eval(cache_dir, second), output_dir=tmp_path / "b")
        assert len(second.chats) == 3  # asked again: other weights
    assert f"the model changed (digest {'a' * 64} -> {'b' * 64})" in caplog.text
    one, two = runs_of()
    assert one.info.run_id != two.info.run_id  # its own run, not the first one continued
    assert one.data.tags["vlmexp.model_identity.digest"] == "a" * 64
    assert two.data.tags["vlmexp.model_identity.digest"] == "b" * 64
    assert two.data.tags["vlmexp.reused_predictions"] == "0"
    metric_history = mlflow.MlflowClient().get_metric_history(two.info.run_id, "data/num_samples")
    assert [m.value for m in metric_history] == [3.0]  # only its own evaluation was logged

    caplog.clear()
    with FakeServer(models=[QWEN_TAG], digest="b" * 64) as same:
        run(ollama_eval(cache_dir, same), output_dir=tmp_path / "c")
        assert same.chats == []  # the same weights: nothing sent
    lines = [r.getMessage() for r in caplog.records if "reusing" in r.getMessage()]
    assert len(lines) == 1 and "reusing 3 of 3 predictions from" in lines[0]
    *_, third = runs_of()
    assert third.data.tags["vlmexp.reused_predictions"] == "3"
    assert third.data.tags["vlmexp.model_identity.model"] == QWEN_TAG


def test_openai_identity_is_the_server_and_model_and_its_fingerprint(cache_dir, tmp_path):
    with FakeServer(models=[QWEN_ID], system_fingerprint="fp_test123") as server:
        cfg = compose_config(["task=smoke", "model=qwen7b", "mode=eval", f"paths.cache_dir={cache_dir}",
                              "data.limit=2", "engine=openai", f"engine.base_url={server.openai_base_url}",
                              "resume=false"])
        run(cfg, output_dir=tmp_path / "a")
    (logged,) = runs_of()
    assert logged.data.tags["vlmexp.model_identity.base_url"] == server.openai_base_url
    assert logged.data.tags["vlmexp.model_identity.model"] == QWEN_ID
    assert logged.data.tags["vlmexp.model_identity.system_fingerprint"] == "fp_test123"


def test_checkpoint_identity_follows_config_and_weights(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    identity = checkpoint_identity(str(copy))
    assert identity == checkpoint_identity(tiny_checkpoint) | {"checkpoint": "ckpt"}
    config = json.loads((copy / "config.json").read_text())
    config["vlmexp_note"] = "changed"
    (copy / "config.json").write_text(json.dumps(config))
    changed_config = checkpoint_identity(str(copy))
    assert changed_config["sha256"] != identity["sha256"]
    (weights,) = copy.glob("*.safetensors")
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # the last byte of the last tensor
    weights.write_bytes(bytes(blob))
    assert checkpoint_identity(str(copy))["sha256"] != changed_config["sha256"]


def test_hub_checkpoint_identity_is_its_commit(monkeypatch, tmp_path):
    import huggingface_hub

    snapshot = tmp_path / "models--org--m" / "snapshots" / "0123abcd" / "config.json"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text("{}")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, revision=None: str(snapshot))
    assert checkpoint_identity("org/m") == {"checkpoint": "org/m", "revision": "main", "commit": "0123abcd"}
