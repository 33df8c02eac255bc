"""A fake Google Cloud Storage on 127.0.0.1, for offline tests of gs:// paths.

Three clients reach gs:// in this project, and each is pointed at the fake its own way:

  tensorstore (Orbax's array and OCDBT files)  TENSORSTORE_GCS_HTTP_URL (plain HTTP)
  google-cloud-storage (Orbax asks it whether  STORAGE_EMULATOR_HOST (plain HTTP)
    the bucket has a hierarchical namespace)
  TensorFlow's gfile (etils.epath's gs://      no endpoint setting: https_proxy names a
    backend, tf.summary, tf.data reads)          local CONNECT proxy that ends TLS with a
                                                 self-signed certificate for
                                                 *.googleapis.com (CURL_CA_BUNDLE) and
                                                 pipes the plain HTTP to the fake

The fake is PyPI's gcp-storage-emulator, in memory, served from a thread of this
process, with six patches for what tf.io.gfile sends and what tensorstore relies on
(see `_patch_emulator`).

    with fake_gcs.serve("my-bucket") as gcs:
      bucket_url, env = gcs            # "gs://my-bucket", variables for a subprocess
      subprocess.run([...], env={**os.environ, **env})
      gcs.names("run/")                # the objects stored, read from the fake itself
      gcs.read("run/summary.json")

The variables also work in this process, for the block `with gcs.environ():` (two fakes
one after the other in one process work too). Nothing is written outside the temporary
folder that holds the certificate; the proxy tunnels to the two Google host names only.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import logging
import os
import select
import shutil
import socket
import ssl
import tempfile
import threading
import uuid
from http import HTTPStatus
from typing import Iterator

import pytest

HOST = "127.0.0.1"
# The host names TensorFlow's GCS client connects to (through the proxy).
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_IDLE_SECONDS = 60  # A tunnel with no traffic for this long is closed.

_patched = False
_patch_lock = threading.Lock()


def _patch_emulator() -> None:
  """Six fixes to the emulator, once per process. Four for what tf.io.gfile sends:

  1. A zero-byte media upload (how gfile makes a `dir/` object) must store b"", not
     fail: the emulator reads an empty body as None.
  2. gfile's resumable PUT sends `Transfer-Encoding: chunked` and `Content-Length`;
     HTTP/1.1 (RFC 9112 6.3) says chunked wins, the emulator reads Content-Length.
  3. The URLs the emulator hands out (a resumable upload's Location) are built from the
     Host header: through the proxy that is www.googleapis.com, which the client would
     then reach at the real Google. Without that Host they name the emulator itself.
  4. gfile's PUT asks `Expect: 100-continue` and waits a second for the answer before
     sending the body anyway; the emulator (an HTTP/1.0 server) never answers: a second
     lost per file written. It answers now, before reading a body.

  Two for what tensorstore's OCDBT (Orbax's format) relies on, as the real GCS does:
  5. A download says its object's generation (header x-goog-generation; tensorstore
     fails with "Malformed StorageGeneration" without it) and honours ifGenerationMatch
     (412) and ifGenerationNotMatch (304 Not Modified: the cached copy is current).
  6. An upload with ifGenerationMatch is refused (412) unless the object's generation is
     that one (0: no such object), so conditional writes cannot overwrite another's.
  """
  global _patched
  with _patch_lock:
    if _patched:
      return
    # pylint: disable=g-import-not-at-top
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    read_data = server._read_data  # pylint: disable=protected-access

    def read_data_empty_ok(handler, query):
      data = read_data(handler, query)
      if data is None and query.get("uploadType", [""])[0] == "media":
        return b""
      return data

    read_raw = server._read_raw_data  # pylint: disable=protected-access

    def read_raw_chunked_first(handler):
      if ((handler.headers.get("Expect") or "").lower() == "100-continue"
          and handler.request_version >= "HTTP/1.1"):
        handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        handler.wfile.flush()
      if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        del handler.headers["Content-Length"]
      return read_raw(handler)

    request_init = server.Request.__init__

    def request_init_own_host(self, handler, method):
      if (handler.headers.get("Host") or "").split(":")[0].endswith(".googleapis.com"):
        del handler.headers["Host"]
      request_init(self, handler, method)

    download, insert = objects.download, objects.insert

    def generation_of(storage, bucket, name):
      try:
        return str(storage.get_file_obj(bucket, name)["generation"])
      except NotFound:
        return None

    def download_with_generation(request, response, storage, *args, **kwargs):
      bucket, name = request.params["bucket_name"], request.params["object_id"]
      generation = generation_of(storage, bucket, name)
      match = request.query.get("ifGenerationMatch", [None])[0]
      not_match = request.query.get("ifGenerationNotMatch", [None])[0]
      if generation is not None and match is not None and match != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
      if generation is not None and not_match is not None and not_match == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        response["x-goog-generation"] = generation
        return None
      result = download(request, response, storage, *args, **kwargs)
      if generation is not None and response.status in (HTTPStatus.OK,
                                                        HTTPStatus.PARTIAL_CONTENT):
        response["x-goog-generation"] = generation
        response["x-goog-metageneration"] = "1"
      return result

    def insert_if_generation_matches(request, response, storage, *args, **kwargs):
      match = request.query.get("ifGenerationMatch", [None])[0]
      if match is not None:
        data = request.data  # Read the body first: the client is sending it.
        name = request.query.get("name", [None])[0]
        if name is None and isinstance(data, dict):
          name = (data.get("meta") or {}).get("name") or data.get("name")
        generation = generation_of(storage, request.params["bucket_name"], name or "")
        if (generation or "0") != match:
          response.status = HTTPStatus.PRECONDITION_FAILED
          response.json({"error": {"code": 412, "message": "Precondition Failed"}})
          return None
      return insert(request, response, storage, *args, **kwargs)

    for _, handlers in server.HANDLERS:  # The routes hold the functions themselves.
      for method, handler in handlers.items():
        if handler is download:
          handlers[method] = download_with_generation
        elif handler is insert:
          handlers[method] = insert_if_generation_matches
    objects.download = download_with_generation  # What objects.get calls for alt=media.
    objects.insert = insert_if_generation_matches  # What the router falls back to.
    server._read_data = read_data_empty_ok  # pylint: disable=protected-access
    server._read_raw_data = read_raw_chunked_first  # pylint: disable=protected-access
    server.Request.__init__ = request_init_own_host
    _patched = True


def make_certificate(directory: str) -> tuple[str, str]:
  """A self-signed certificate (its own CA) for GOOGLE_HOSTS: (cert.pem, key.pem)."""
  # pylint: disable=g-import-not-at-top
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (x509.CertificateBuilder()
          .subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectAlternativeName(
              [x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False)
          .sign(key, hashes.SHA256()))
  cert_path = os.path.join(directory, "cert.pem")
  key_path = os.path.join(directory, "key.pem")
  with open(cert_path, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
  with open(key_path, "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return cert_path, key_path


class TlsProxy:
  """An HTTP CONNECT proxy on 127.0.0.1 that accepts tunnels to GOOGLE_HOSTS:443 only,
  ends their TLS with the given certificate and pipes the plain bytes to `upstream`."""

  def __init__(self, cert_path: str, key_path: str, upstream: tuple[str, int]):
    self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self._context.load_cert_chain(cert_path, key_path)
    self._upstream = upstream
    self._listener = socket.create_server((HOST, 0), backlog=128)
    self._listener.settimeout(0.2)  # accept() wakes up to see stop().
    self.port = self._listener.getsockname()[1]
    self.errors: list[str] = []  # Refused tunnels and failed handshakes, for messages.
    self.tunnels = 0
    self._open: set[socket.socket] = set()
    self._lock = threading.Lock()
    self._stopping = threading.Event()
    self._thread = threading.Thread(target=self._accept, name="fake-gcs-proxy",
                                    daemon=True)
    self._thread.start()

  def _accept(self) -> None:
    while not self._stopping.is_set():
      try:
        client, _ = self._listener.accept()
      except socket.timeout:
        continue
      except OSError:  # Closed by stop().
        return
      client.settimeout(None)  # Inherited from the listener otherwise (on some systems).
      threading.Thread(target=self._serve, args=(client,), daemon=True).start()

  def _track(self, sock: socket.socket, add: bool) -> None:
    with self._lock:
      (self._open.add if add else self._open.discard)(sock)

  def _serve(self, client: socket.socket) -> None:
    upstream = None
    self._track(client, True)
    try:
      client.settimeout(_IDLE_SECONDS)
      head = b""
      while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk or len(head) > 65536:
          return
        head += chunk
      words = head.split(b"\r\n", 1)[0].decode("latin-1").split()
      target = words[1] if len(words) == 3 and words[0] == "CONNECT" else ""
      if target.rpartition(":")[::2] not in {(h, "443") for h in GOOGLE_HOSTS}:
        self.errors.append(f"refused: {' '.join(words)[:200]}")
        client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        return
      client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      try:
        client = self._context.wrap_socket(client, server_side=True)
      except (ssl.SSLError, OSError) as e:
        self.errors.append(f"TLS handshake for {target}: {e}")
        return
      self._track(client, True)
      upstream = socket.create_connection(self._upstream, timeout=_IDLE_SECONDS)
      self._track(upstream, True)
      with self._lock:
        self.tunnels += 1
      self._pipe(client, upstream)
    except OSError:
      pass  # A peer went away: the tunnel ends.
    finally:
      for sock in (client, upstream):
        if sock is not None:
          self._track(sock, False)
          with contextlib.suppress(OSError):
            sock.close()

  @staticmethod
  def _pipe(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Copies both ways from one thread (an SSL object must not be used by two threads at
    once) until either side closes."""
    while True:
      # Bytes already decrypted inside the SSL object do not make the socket readable.
      ready = [tls] if tls.pending() else select.select([tls, upstream], [], [],
                                                        _IDLE_SECONDS)[0]
      if not ready:
        return
      for source in ready:
        data = source.recv(65536)
        if not data:
          return
        (upstream if source is tls else tls).sendall(data)

  def stop(self) -> None:
    self._stopping.set()
    self._listener.close()
    with self._lock:
      sockets = list(self._open)
    for sock in sockets:
      with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    self._thread.join(timeout=5)


class _EmulatorServer(http.server.HTTPServer):
  # The emulator serves one request at a time (its storage is not locked); a deep queue
  # keeps clients that open many connections at once (tensorstore) from being refused.
  request_queue_size = 128


class FakeGcs:
  """A running fake: `bucket`, `bucket_url` ("gs://bucket"), `env` (the variables that
  point every client at it), and `names`/`read` to look at what was stored. Unpacks as
  (bucket_url, env)."""

  def __init__(self, bucket: str, directory: str):
    # pylint: disable=g-import-not-at-top
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import buckets
    from gcp_storage_emulator.storage import Storage

    _patch_emulator()
    self.bucket = bucket
    self.bucket_url = f"gs://{bucket}"
    self._storage = Storage(use_memory_fs=True)
    buckets.create_bucket(bucket, self._storage)
    handler = lambda *args: emulator.RequestHandler(self._storage, *args)
    self._httpd = _EmulatorServer((HOST, 0), handler)
    self.port = self._httpd.server_address[1]
    self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-gcs",
                                    daemon=True)
    self._thread.start()
    self.cert_path, key_path = make_certificate(directory)
    self.proxy = TlsProxy(self.cert_path, key_path, (HOST, self.port))
    endpoint = f"http://{HOST}:{self.port}"
    proxy = f"http://{HOST}:{self.proxy.port}"
    local = f"{HOST},localhost"
    self.env = {
        "TENSORSTORE_GCS_HTTP_URL": endpoint,  # tensorstore's gcs driver.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # tensorstore and TF: no credential look-up.
        "STORAGE_EMULATOR_HOST": endpoint,  # google-cloud-storage (anonymous then).
        "https_proxy": proxy, "HTTPS_PROXY": proxy,  # TensorFlow's curl.
        "CURL_CA_BUNDLE": self.cert_path,
        "no_proxy": local, "NO_PROXY": local,  # The plain-HTTP clients go straight there.
        "NO_GCE_CHECK": "true",  # TF: no metadata-server probe.
    }

  def __iter__(self):
    return iter((self.bucket_url, self.env))

  @contextlib.contextmanager
  def environ(self) -> Iterator[None]:
    """Sets `env` in this process's os.environ for the block, then restores it."""
    saved = {k: os.environ.get(k) for k in self.env}
    os.environ.update(self.env)
    try:
      yield
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v

  def names(self, prefix: str = "") -> list[str]:
    """The names of the objects stored under `prefix` (no leading slash), sorted."""
    objects, _ = self._storage.get_file_list(self.bucket, prefix=prefix or None)
    return sorted(o["name"] for o in objects)

  def read(self, name: str) -> bytes:
    """The content of the object `name` (KeyError when there is none)."""
    from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
    try:
      return self._storage.get_file(self.bucket, name, show_error=False)
    except NotFound:
      raise KeyError(f"{self.bucket_url}/{name} is not in the fake bucket; it holds "
                     f"{self.names()[:50]}") from None

  def stop(self) -> None:
    self.proxy.stop()
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=5)


@contextlib.contextmanager
def serve(bucket: str | None = None) -> Iterator[FakeGcs]:
  """Runs a fake GCS holding one empty bucket (by default a new name each time: clients
  that cache per bucket never mix two fakes); stops it and removes its certificate at
  the end of the block."""
  bucket = bucket or f"simclr-test-{uuid.uuid4().hex[:12]}"
  # It logs every missing object at ERROR ("Resource not found"), which is how clients
  # ask whether something exists; a failing request still shows as a client error.
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  directory = tempfile.mkdtemp(prefix="fake_gcs_")
  fake = None
  try:
    fake = FakeGcs(bucket, directory)
    yield fake
  finally:
    if fake is not None:
      fake.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fake_gcs() -> Iterator[FakeGcs]:
  """A fresh fake GCS for one test (see `serve`)."""
  with serve() as fake:
    yield fake
