"""A client for jobvisor's HTTP/JSON API, standard library only.

    import jobvisor
    c = jobvisor.Client("http://127.0.0.1:8910", token="jv_...")
    job = c.submit("noop", 41)
    record = c.wait(job.id, timeout=30)
    assert record["state"] == "succeeded"
    print(c.result(job.id)["output"])

Errors the API answers are raised as :class:`JobvisorError` with the API's
``code`` (``"not_found"``, ``"unauthorized"``, ...) and the HTTP ``status``.
The records are the daemon's public JSON (``docs/json.md``), as dicts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

__all__ = ["Client", "Event", "Job", "JobvisorError"]

Record = Dict[str, Any]


class JobvisorError(Exception):
    """An error answer of the API: its ``code``, ``status`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Job:
    """A submitted job: its ``id``, and whether an earlier job with the same
    idempotency key was returned instead (``duplicate``)."""

    id: int
    duplicate: bool = False


@dataclass(frozen=True)
class Event:
    """One server-sent event: its ``id`` (for resuming), ``kind`` and ``data``."""

    id: str
    kind: str
    data: Record


class Client:
    """One daemon's HTTP API at ``url``, with a bearer ``token``."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- jobs ---------------------------------------------------------------

    def submit(
        self,
        task: str,
        input: Any = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        max_attempts: Optional[int] = None,
        max_crashes: Optional[int] = None,
        timeout_ms: Optional[int] = None,
        delay_ms: Optional[int] = None,
        after: Optional[List[int]] = None,
        key: Optional[str] = None,
        input_from: Optional[List[Any]] = None,
        notify_url: Optional[str] = None,
    ) -> Job:
        """Submits one job; returns it once the daemon has stored it."""
        spec = _spec(
            task,
            input,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            max_crashes=max_crashes,
            timeout_ms=timeout_ms,
            delay_ms=delay_ms,
            after=after,
            key=key,
            input_from=input_from,
            notify_url=notify_url,
        )
        answer = self._call("POST", "/v1/jobs", spec)
        return Job(answer["id"], answer.get("duplicate", False))

    def submit_many(self, specs: List[Record]) -> List[Job]:
        """Submits several jobs, all or none. Each spec is a dict with ``task``,
        ``input`` and the options of :meth:`submit`; ``"#N"`` in ``input_from``
        names the N-th job of the list (from 1)."""
        answer = self._call("POST", "/v1/jobs", {"jobs": list(specs)})
        return [Job(j["id"], j.get("duplicate", False)) for j in answer["jobs"]]

    def get(self, job_id: int) -> Record:
        """The job's record."""
        return self._call("GET", f"/v1/jobs/{int(job_id)}")

    def wait(self, job_id: int, timeout: float = 30.0) -> Record:
        """The job's record once it has finished, or as it is after ``timeout``
        seconds (check ``record["state"]``)."""
        ms = max(1, int(timeout * 1000))
        return self._call(
            "GET", f"/v1/jobs/{int(job_id)}/wait?timeout={ms}ms", read_timeout=timeout + self.timeout
        )

    def result(self, job_id: int) -> Record:
        """``{"id", "state", "output", "error"}`` of a finished job."""
        return self._call("GET", f"/v1/jobs/{int(job_id)}/result")

    def cancel(self, job_id: int) -> None:
        """Cancels a queued or running job."""
        self._call("POST", f"/v1/jobs/{int(job_id)}/cancel", {})

    def retry(self, job_id: int) -> None:
        """Re-queues a finished job that did not succeed, with fresh budgets."""
        self._call("POST", f"/v1/jobs/{int(job_id)}/retry", {})

    def list(
        self,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        limit: Optional[int] = None,
        before: Optional[int] = None,
    ) -> Record:
        """A page of jobs, newest first: ``{"jobs": [...], "next_before": id}``."""
        query = {k: v for k, v in (("state", state), ("queue", queue), ("limit", limit), ("before", before)) if v is not None}
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self._call("GET", "/v1/jobs" + suffix)

    # -- the daemon ---------------------------------------------------------

    def workers(self) -> List[Record]:
        """The worker processes."""
        return self._call("GET", "/v1/workers")["workers"]

    def stats(self) -> Record:
        """The daemon's figures."""
        return self._call("GET", "/v1/stats")

    def events(self, last_event_id: Optional[str] = None) -> Iterator[Event]:
        """The daemon's events, the kept ones first, then live ones, for as long
        as the caller iterates. Pass the ``id`` of the last event seen to
        resume after it."""
        headers = self._headers()
        headers["accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["last-event-id"] = last_event_id
        req = urllib.request.Request(self.url + "/v1/events", headers=headers)
        resp = self._open(req, None)
        try:
            fields: Dict[str, str] = {}
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if "data" in fields:
                        yield Event(fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"]))
                    fields = {}
                elif not line.startswith(":") and ":" in line:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        finally:
            resp.close()

    # -- plumbing -----------------------------------------------------------

    def _headers(self) -> Dict[str, str]:
        headers = {"accept": "application/json"}
        if self.token is not None:
            headers["authorization"] = f"Bearer {self.token}"
        return headers

    def _open(self, req: urllib.request.Request, timeout: Optional[float]) -> Any:
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                err = json.loads(body)["error"]
                raise JobvisorError(e.code, err.get("code", ""), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise JobvisorError(e.code, "http", body.decode("utf-8", "replace")) from None

    def _call(self, method: str, path: str, body: Any = None, read_timeout: Optional[float] = None) -> Any:
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["content-type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with self._open(req, read_timeout or self.timeout) as resp:
            return json.loads(resp.read())


def _spec(task: str, input: Any, **options: Any) -> Record:
    spec: Record = {"task": task, "input": input}
    spec.update({k: v for k, v in options.items() if v is not None})
    return spec
