"""A stand-in for the Hugging Face Hub's upload API, for offline tests of `qtools publish` with the real
huggingface_hub client (xet disabled: `HF_HUB_DISABLE_XET=1`).

It serves, on 127.0.0.1, the endpoints huggingface_hub 1.33 calls on its LFS upload path and stores what it
receives under a directory: repository creation, branches, model info, the recursive tree, README metadata
validation, preupload (upload mode and remote oid per file), the LFS batch API (an upload action, or none for an
object it already stores), the LFS object PUT (sha256 and size checked) and the NDJSON commit. Every request is
logged (`requests`) so tests can count what was sent. `fail_puts_after` makes it refuse LFS PUTs (403, which the
client does not retry) once that many objects were stored: an upload interrupted part way; `hold_puts_after`
makes it hold further PUTs unanswered (setting `held`) until it stops: a client to kill mid-upload.

Not modelled (see docs/publish.md): authentication and permissions, Xet storage, multipart LFS uploads, git
history beyond a list of commits, .gitattributes rules, pagination, rate limits, gated or private access.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Files the stand-in stores through LFS: suffixes of the Hub's default .gitattributes, or 10 MB and over.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".npy", ".onnx", ".model")
LFS_MIN_BYTES = 10 * 1024 * 1024
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob holding `data` (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubState:
    """Repositories (id -> {branch: {path: entry}}), the LFS store (oid -> bytes on disk) and the request log."""

    root: Path
    repos: dict[str, dict[str, dict[str, dict]]] = field(default_factory=dict)
    commits: dict[str, list[dict]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    puts: list[str] = field(default_factory=list)
    fail_puts_after: int | None = None
    hold_puts_after: int | None = None
    admitted: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lfs_path(self, oid: str) -> Path:
        return self.root / "lfs" / oid

    def blob_path(self, blob: str) -> Path:
        return self.root / "blobs" / blob

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The content of every file of `repo_id` at `revision`."""
        tree = self.repos[repo_id][revision]
        return {
            path: (self.lfs_path(e["sha256"]) if e["sha256"] else self.blob_path(e["blob"])).read_bytes()
            for path, e in tree.items()
        }

    def count(self, method: str, fragment: str) -> int:
        """How many logged requests used `method` on a path containing `fragment`."""
        return sum(1 for m, path in self.requests if m == method and fragment in path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState

    def log_message(self, *args) -> None:  # the test output is no place for an access log
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: object = None, error_code: str | None = None) -> None:
        body = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", error_code)
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        state = self.state
        with state.lock:
            state.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT") else b""
        parts = path.strip("/").split("/")
        try:
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo(json.loads(body))
            if method == "POST" and path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if method == "PUT" and parts[0] == "lfs-upload":
                return self._put_object(parts[1], body)
            if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
                return self._lfs_batch(path.removeprefix("/").removesuffix(".git/info/lfs/objects/batch"), body)
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, action, rest = f"{parts[2]}/{parts[3]}", (parts[4:5] or [""])[0], parts[5:]
                if repo_id not in state.repos:
                    return self._send(404, {"error": "Repository not found"}, "RepoNotFound")
                return self._repo_call(method, repo_id, action, rest, query, body)
        except (ValueError, KeyError) as error:
            return self._send(400, {"error": f"bad request: {error}"})
        return self._send(404, {"error": f"not modelled: {method} {path}"})

    do_GET = lambda self: self._route("GET")  # noqa: E731
    do_POST = lambda self: self._route("POST")  # noqa: E731
    do_PUT = lambda self: self._route("PUT")  # noqa: E731

    def _create_repo(self, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        state = self.state
        with state.lock:
            if repo_id in state.repos:
                # As the Hub does: the conflict still carries the URL, which create_repo(exist_ok=True) returns.
                return self._send(409, {"error": "You already created this model repo", "url": url})
            blob = git_blob_id(GITATTRIBUTES)
            state.blob_path(blob).parent.mkdir(parents=True, exist_ok=True)
            state.blob_path(blob).write_bytes(GITATTRIBUTES)
            entry = {"size": len(GITATTRIBUTES), "sha256": None, "blob": blob}
            state.repos[repo_id] = {"main": {".gitattributes": entry}}
            state.commits[repo_id] = [{"branch": "main", "summary": "initial commit", "oid": "0" * 40}]
        self._send(200, {"url": url, "name": repo_id})

    def _repo_call(self, method: str, repo_id: str, action: str, rest: list, query: dict, body: bytes) -> None:
        branches = self.state.repos[repo_id]
        if method == "GET" and action in ("", "revision"):
            revision = rest[0] if rest else "main"
            if revision not in branches:
                return self._send(404, {"error": "Revision not found"}, "RevisionNotFound")
            sha = self.state.commits[repo_id][-1]["oid"]
            siblings = [{"rfilename": p} for p in branches[revision]]
            return self._send(200, {"id": repo_id, "sha": sha, "private": False, "siblings": siblings})
        if method == "POST" and action == "branch":
            if rest[0] in branches:
                return self._send(409, {"error": "Branch already exists"})
            branches[rest[0]] = dict(branches["main"])
            return self._send(200, {})
        if method == "GET" and action == "tree":
            revision = rest[0] if rest else "main"
            if revision not in branches:
                return self._send(404, {"error": "Revision not found"}, "RevisionNotFound")
            return self._send(200, self._tree(branches[revision]))
        if method == "POST" and action == "preupload":
            tree = branches.get(rest[0], branches["main"])
            files = []
            for item in json.loads(body)["files"]:
                lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_BYTES
                there = tree.get(item["path"])
                oid = None if there is None else (there["sha256"] or there["blob"])
                files.append(
                    {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
                )
            return self._send(200, {"files": files})
        if method == "POST" and action == "commit":
            return self._commit(repo_id, rest[0], "1" in query.get("create_pr", []), body)
        return self._send(404, {"error": f"not modelled: {method} {action}"})

    @staticmethod
    def _tree(tree: dict[str, dict]) -> list[dict]:
        listed = []
        for path, entry in sorted(tree.items()):
            item = {"type": "file", "path": path, "size": entry["size"], "oid": entry["blob"]}
            if entry["sha256"]:
                item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": 134}
            listed.append(item)
        return listed

    def _lfs_batch(self, repo_id: str, body: bytes) -> None:
        if repo_id not in self.state.repos:
            return self._send(404, {"error": "Repository not found"}, "RepoNotFound")
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if not self.state.lfs_path(obj["oid"]).exists():
                entry["actions"] = {"upload": {"href": f"http://{self.headers['Host']}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _put_object(self, oid: str, data: bytes) -> None:
        state = self.state
        with state.lock:  # admitted and counted in one step, so concurrent PUTs cannot both slip past the hold
            hold = state.hold_puts_after is not None and state.admitted >= state.hold_puts_after
            state.admitted += 0 if hold else 1
        if hold:
            # An upload in flight when the client is killed: never answered, never stored.
            state.held.set()
            state.release.wait()
            return self._send(503, {"error": "stand-in stopped"})
        with state.lock:
            if state.fail_puts_after is not None and len(state.puts) >= state.fail_puts_after:
                return self._send(403, {"error": "stand-in told to refuse further uploads"})
            if hashlib.sha256(data).hexdigest() != oid:
                return self._send(400, {"error": "sha256 does not match the oid"})
            state.lfs_path(oid).parent.mkdir(parents=True, exist_ok=True)
            state.lfs_path(oid).write_bytes(data)
            state.puts.append(oid)
        self._send(200, {})

    def _commit(self, repo_id: str, revision: str, create_pr: bool, body: bytes) -> None:
        state = self.state
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        with state.lock:
            branches = state.repos[repo_id]
            if revision not in branches:
                return self._send(404, {"error": "Revision not found"}, "RevisionNotFound")
            tree = dict(branches[revision])
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    data = base64.b64decode(value["content"])
                    blob = git_blob_id(data)
                    state.blob_path(blob).parent.mkdir(parents=True, exist_ok=True)
                    state.blob_path(blob).write_bytes(data)
                    tree[value["path"]] = {"size": len(data), "sha256": None, "blob": blob}
                elif line["key"] == "lfsFile":
                    if not state.lfs_path(value["oid"]).exists():
                        return self._send(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    pointer = (
                        f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\nsize {value['size']}\n"
                    )
                    tree[value["path"]] = {
                        "size": value["size"],
                        "sha256": value["oid"],
                        "blob": git_blob_id(pointer.encode()),
                    }
                elif line["key"] == "deletedFile":
                    tree.pop(value["path"], None)
                else:
                    return self._send(400, {"error": f"not modelled: commit operation {line['key']}"})
            oid = hashlib.sha1(json.dumps([repo_id, len(state.commits[repo_id]), sorted(tree)]).encode()).hexdigest()
            target = revision
            if create_pr:
                target = f"refs/pr/{sum(1 for b in branches if b.startswith('refs/pr/')) + 1}"
            branches[target] = tree
            state.commits[repo_id].append({"branch": target, "summary": header["summary"], "oid": oid})
        base = f"http://{self.headers['Host']}/{repo_id}"
        pr = f"{base}/discussions/{target.rsplit('/', 1)[-1]}" if create_pr else None
        self._send(200, {"commitUrl": f"{base}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr})


class HubServer:
    """The stand-in Hub on 127.0.0.1 at a free port, serving from a thread; `endpoint` is its URL (for
    HF_ENDPOINT). Use as a context manager, or call `start` and `stop`."""

    def __init__(self, root: Path):
        self.state = HubState(Path(root))
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True  # a held request's thread must not keep `stop` waiting
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
