"""Framing of messages between the grader and a submission's worker: a JSON header and raw
buffers, over a pair of pipes. Nothing here evaluates what it reads; sizes are capped, so a
hostile worker can make a read fail but not exhaust the grader's memory."""

import json
import os
import select
import struct
import time

LENGTH = struct.Struct("<Q")
MAX_MESSAGE = 512 * 2**20
"""The largest message (header and buffers) either side accepts."""


class ChannelClosed(ConnectionError):
    """The other side is gone or broke the framing."""


class Deadline(TimeoutError):
    """The other side did not answer in time."""


class Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.deadline: float | None = None
        """time.monotonic() after which a read gives up (None: wait for ever)."""

    def send(self, header: dict, buffers: list[bytes]) -> None:
        encoded = json.dumps({**header, "buffers": len(buffers)}, allow_nan=False).encode()
        parts = [LENGTH.pack(len(encoded)), encoded]
        for buffer in buffers:
            parts += [LENGTH.pack(len(buffer)), buffer]
        payload = b"".join(parts)
        if len(payload) > MAX_MESSAGE:
            raise ValueError(
                f"a message of {len(payload) / 2**20:.0f} MiB is over the {MAX_MESSAGE // 2**20} MiB limit"
            )
        view = memoryview(payload)
        try:
            while view:
                written = os.write(self.write_fd, view)
                view = view[written:]
        except OSError as error:
            raise ChannelClosed(f"could not write: {error}") from error

    def receive(self) -> tuple[dict, list[bytes]]:
        budget = [MAX_MESSAGE]
        header = json.loads(self._read(self._length(budget)))
        if (
            not isinstance(header, dict)
            or not isinstance(header.get("buffers"), int)
            or not 0 <= header["buffers"] < 2**20
        ):
            raise ChannelClosed("malformed message header")
        return header, [self._read(self._length(budget)) for _ in range(header["buffers"])]

    def _length(self, budget: list[int]) -> int:
        (length,) = LENGTH.unpack(self._read(LENGTH.size))
        if length > budget[0]:
            raise ChannelClosed(f"a message over the {MAX_MESSAGE // 2**20} MiB limit")
        budget[0] -= length
        return length

    def _read(self, count: int) -> bytes:
        chunks, remaining = [], count
        while remaining:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                    raise Deadline("no answer before the time limit")
            chunk = os.read(self.read_fd, min(remaining, 1 << 20))
            if not chunk:
                raise ChannelClosed("the other side closed the channel")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
