"""Solves that share their passes over the data: each runs in its own thread, and whenever
every solve still running waits for a value, one call evaluates all of them.

A sweep over ``C`` of ``logreg`` or ``svm`` minimises the same objective with four
penalties. Each solve is scipy's L-BFGS-B, which asks for values one at a time, so each gets
a thread; the threads take turns with one coordinator (this thread), which evaluates the
points they wait on in one pass over the data (the models side by side in each product).
On 2 cores, four 51,000 x 1,280 x 10 problems cost 47 ms of products a pass instead of
4 x 29 ms (benchmarks/README.md, "Heads at scale").

Which solves share a round depends only on the solves themselves (a round waits for every
solve still running), never on timing, so the results are reproducible. An error in a solve
or in the coordinator (an interrupt included) stops all of them and is raised here.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class _Cancelled(Exception):
    """Raised inside a solve's value function when the lockstep stops."""


def run_lockstep(solves: list[Callable[[Callable[[Any], Any]], Any]],
                 evaluate: Callable[[list[tuple[int, Any]]], list[Any]]) -> list[Any]:
    """Run each ``solves[i](fun)`` in its own thread and return their results in order.

    ``fun(x)`` blocks until the round: once every solve still running has called its ``fun``,
    ``evaluate([(i, x_i), ...])`` (sorted by ``i``), called in this thread, returns their
    values in that order. The first exception of a solve, or of ``evaluate``, stops the
    others and is raised here.
    """
    return _Lockstep(solves).run(evaluate)


class _Lockstep:
    """The rounds of :func:`run_lockstep`: solves post requests, this thread answers them."""

    def __init__(self, solves: list):
        self.solves = solves
        self.cond = threading.Condition()
        self.requests: dict[int, Any] = {}
        self.answers: dict[int, Any] = {}
        self.running = set(range(len(solves)))
        self.results: list[Any] = [None] * len(solves)
        self.errors: list[BaseException] = []
        self.stopped = False

    def run(self, evaluate) -> list[Any]:
        threads = [threading.Thread(target=self._work, args=(i,), name=f"featcache-solve-{i}", daemon=True)
                   for i in range(len(self.solves))]
        for t in threads:
            t.start()
        try:
            while (batch := self._next_round()) is not None:
                values = evaluate(batch)
                with self.cond:
                    self.answers.update((i, v) for (i, _), v in zip(batch, values))
                    self.cond.notify_all()
        except BaseException:
            self._stop()
            raise
        finally:
            for t in threads:
                t.join()
        if self.errors:
            raise self.errors[0]
        return self.results

    def _next_round(self) -> list[tuple[int, Any]] | None:
        """The requests of every running solve, once all have posted one; None when done."""
        with self.cond:
            while self.running and not self.stopped and not self.running <= self.requests.keys():
                self.cond.wait()
            if not self.running or self.stopped:
                return None
            batch = sorted(self.requests.items())
            self.requests.clear()
            return batch

    def _stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _value_of(self, i: int) -> Callable[[Any], Any]:
        def fun(x):
            with self.cond:
                if not self.stopped:
                    self.requests[i] = x
                    self.cond.notify_all()
                while i not in self.answers and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    raise _Cancelled
                return self.answers.pop(i)
        return fun

    def _work(self, i: int) -> None:
        try:
            self.results[i] = self.solves[i](self._value_of(i))
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - raised by run()
            with self.cond:
                self.errors.append(e)
            self._stop()
        finally:
            with self.cond:
                self.running.discard(i)
                self.cond.notify_all()
