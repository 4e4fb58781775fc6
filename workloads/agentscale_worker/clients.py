"""Which client holds which runs, at one gateway: what the per-client fair share (``admission.admit_client``)
counts. No I/O; the gateway adds a run when it admits it and releases it when the results stream reports it
finished (or when it was never enqueued). Runs this gateway never hears of again (a lost Redis) are dropped
after ``max_age_s``."""

from __future__ import annotations


class ClientBook:
    def __init__(self) -> None:
        self.held: dict[str, int] = {}  # client -> runs held (only clients holding some)
        self._owner: dict[str, tuple[str, float]] = {}  # run id -> (client, admitted at)

    def holds(self, client: str) -> int:
        return self.held.get(client, 0)

    def active(self, client: str) -> int:
        """Clients holding runs, counting ``client`` itself whether or not it holds any."""
        return len(self.held) + (0 if client in self.held else 1)

    def most_held_by_others(self, client: str) -> int:
        return max((n for c, n in self.held.items() if c != client), default=0)

    def add(self, client: str, run_id: str, now: float) -> bool:
        """Book a run for a client; False (and nothing booked) when this run id is already held here."""
        if run_id in self._owner:
            return False
        self._owner[run_id] = (client, now)
        self.held[client] = self.held.get(client, 0) + 1
        return True

    def release(self, run_id: str) -> None:
        owner = self._owner.pop(run_id, None)
        if owner is None:
            return
        client = owner[0]
        left = self.held.get(client, 0) - 1
        if left > 0:
            self.held[client] = left
        else:
            self.held.pop(client, None)

    def prune(self, now: float, max_age_s: float) -> int:
        old = [r for r, (_, t) in self._owner.items() if now - t > max_age_s]
        for run_id in old:
            self.release(run_id)
        return len(old)

    def __len__(self) -> int:
        return len(self._owner)
