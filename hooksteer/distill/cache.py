"""On-disk cache of distillation records: resumable, append-only, safetensors (no pickle).

Layout of a cache folder::

    index.jsonl                 one JSON line per record: settings key, pair, response text, shard + row
    shard-<id>.safetensors      the tensors of one batch of records (written to a temp file, then renamed)

A record is found by ``(settings key, concept_id, steering_prompt, base_prompt)``; the key hashes the
:class:`~hooksteer.distill.config.DistillConfig` and the teacher model, so changing either makes new
records instead of reusing stale ones. A shard is renamed into place *before* its index lines are appended,
so an interrupted run loses at most the batch it was writing; a line cut off mid-write, or a shard that is
missing or corrupt, only means those pairs are made again.

Example:
    >>> cache = DistillCache("runs/distill-cache")                       # doctest: +SKIP
    >>> found = cache.load(key, [("volcano", "Write about Volcano.", "Tell me a fact.")])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hooksteer.distill.records import DistillRecord

__all__ = ["DistillCache", "PairKey"]

INDEX_FILE = "index.jsonl"
PairKey = tuple[str, str, str]  # (concept_id, steering_prompt, base_prompt)


class DistillCache:
    """A folder of distillation records (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"distillation cache {self.directory} exists and is not a folder")

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    def _index(self, key: str) -> dict[PairKey, dict]:
        if not self.index_path.is_file():
            return {}
        entries: dict[PairKey, dict] = {}
        for line in self.index_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by an interrupted run
                continue
            if isinstance(entry, dict) and entry.get("key") == key:
                entries[(entry["concept_id"], entry["steering_prompt"], entry["base_prompt"])] = entry
        return entries

    def load(self, key: str, pairs: Sequence[PairKey]) -> dict[PairKey, DistillRecord]:
        """The cached records among ``pairs`` (pairs that are missing or unreadable are left out)."""
        index = self._index(key)
        wanted = [pair for pair in dict.fromkeys(pairs) if pair in index]
        by_shard: dict[str, list[PairKey]] = {}
        for pair in wanted:
            by_shard.setdefault(index[pair]["shard"], []).append(pair)
        found: dict[PairKey, DistillRecord] = {}
        for shard, shard_pairs in by_shard.items():
            path = self.directory / shard
            if Path(shard).name != shard or not path.is_file():
                continue
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for pair in shard_pairs:
                        entry = index[pair]
                        row = int(entry["row"])
                        found[pair] = DistillRecord(
                            concept_id=entry["concept_id"], steering_prompt=entry["steering_prompt"],
                            base_prompt=entry["base_prompt"], base_prompt_id=entry.get("base_prompt_id", ""),
                            response=entry.get("response", ""), finished=bool(entry["finished"]),
                            response_ids=handle.get_tensor(f"{row}.response_ids").long(),
                            teacher_ids=handle.get_tensor(f"{row}.teacher_ids"),
                            teacher_logprobs=handle.get_tensor(f"{row}.teacher_logprobs").float())
            except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
                warnings.warn(f"distillation cache shard {path} is unreadable ({error}); its pairs will be made "
                              "again", stacklevel=2)
                for pair in shard_pairs:
                    found.pop(pair, None)
        return found

    def append(self, key: str, records: Sequence[DistillRecord]) -> None:
        """Write ``records`` as one new shard, then index them."""
        if not records:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        shard = f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        tensors = {}
        for row, record in enumerate(records):
            tensors[f"{row}.response_ids"] = record.response_ids.to(torch.int64).contiguous().cpu()
            tensors[f"{row}.teacher_ids"] = record.teacher_ids.to(torch.int32).contiguous().cpu()
            tensors[f"{row}.teacher_logprobs"] = record.teacher_logprobs.to(torch.float32).contiguous().cpu()
        tmp = self.directory / (shard + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata={"format": "hooksteer.distill", "key": key})
            os.replace(tmp, self.directory / shard)
        finally:
            tmp.unlink(missing_ok=True)
        lines = [json.dumps({"key": key, "concept_id": r.concept_id, "steering_prompt": r.steering_prompt,
                             "base_prompt": r.base_prompt, "base_prompt_id": r.base_prompt_id, "response": r.response,
                             "finished": bool(r.finished), "n_tokens": r.n_tokens, "shard": shard, "row": row},
                            ensure_ascii=False) for row, r in enumerate(records)]
        with self.index_path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:  # an interrupted run may have left half a line: end it first
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(("\n".join(lines) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
