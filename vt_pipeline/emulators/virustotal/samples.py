"""Synthetic sample bytes: deterministic, streamed, and cheap to hash for a whole corpus.

A sample is ``header + filler[:filler_len] + tail``:

- ``header``: the magic bytes of its file type, so the bytes look like what VirusTotal says;
- ``filler``: a prefix of an endless repetition of one 64 KiB block shared by the whole corpus;
- ``tail``: ``tail_len`` bytes unique to the sample, drawn from ``(seed, index)``.

Samples that share a header share the hash state of ``header + filler[:n]``. Hashing every sample
of a corpus therefore costs one pass over the longest filler per header plus the tails, not every
byte of every sample (a 10,000-file corpus holds gigabytes). Nothing is kept in memory but the
filler block: bytes are produced chunk by chunk when a sample is downloaded. Samples are random
bytes behind a magic number, never real malware.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MIB = 1 << 20
_BLOCK = 1 << 16
# The filler block repeated past one MiB, so any MiB of filler is one slice at any offset.
_SPAN = MIB + _BLOCK


@dataclass(frozen=True, slots=True)
class SampleLayout:
    """Where one sample's bytes come from; its size is the sum of the three parts."""

    index: int
    header: bytes
    filler_len: int
    tail_len: int

    @property
    def size(self) -> int:
        return len(self.header) + self.filler_len + self.tail_len


@dataclass(frozen=True, slots=True)
class Hashes:
    md5: str
    sha1: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "sha1": self.sha1, "md5": self.md5}


class SyntheticSamples:
    """Produces and hashes the samples of one generated corpus."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        block = random.Random(f"vt-samples:{seed}:filler").randbytes(_BLOCK)
        self._span = memoryview(block * (_SPAN // _BLOCK))

    def tail(self, layout: SampleLayout) -> bytes:
        return random.Random(f"vt-samples:{self._seed}:{layout.index}").randbytes(layout.tail_len)

    def _filler(self, start: int, end: int) -> Iterator[memoryview]:
        """Filler bytes [start, end) in slices of at most one MiB."""
        while start < end:
            offset = start % _BLOCK
            length = min(end - start, MIB)
            yield self._span[offset : offset + length]
            start += length

    def chunks(self, layout: SampleLayout, chunk_size: int = MIB) -> Iterator[bytes]:
        """The sample's bytes, in chunks of at most ``chunk_size`` (header and tail apart)."""
        yield layout.header
        for start in range(0, layout.filler_len, chunk_size):
            end = min(start + chunk_size, layout.filler_len)
            yield b"".join(self._filler(start, end))
        yield self.tail(layout)

    def hash_all(self, layouts: Iterable[SampleLayout]) -> dict[int, Hashes]:
        """Hashes of every layout, by index, reusing the shared header+filler hash states."""
        by_header: dict[bytes, list[SampleLayout]] = defaultdict(list)
        for layout in layouts:
            by_header[layout.header].append(layout)
        hashes: dict[int, Hashes] = {}
        for header, group in by_header.items():
            group.sort(key=lambda layout: layout.filler_len)
            states = [hashlib.md5(header), hashlib.sha1(header), hashlib.sha256(header)]
            position = 0
            for layout in group:
                for piece in self._filler(position, layout.filler_len):
                    for state in states:
                        state.update(piece)
                position = layout.filler_len
                tail = self.tail(layout)
                md5, sha1, sha256 = (state.copy() for state in states)
                for state in (md5, sha1, sha256):
                    state.update(tail)
                hashes[layout.index] = Hashes(md5.hexdigest(), sha1.hexdigest(), sha256.hexdigest())
        return hashes
