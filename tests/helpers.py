"""Test scaffolding shared by test modules: a local HTTP file server, so no test touches the network."""

import contextlib
import http.server
import threading


class FileServer:
    """Serves `files` ({path: bytes}) on 127.0.0.1 from a thread, with HTTP Range support, an ETag per
    file, and knobs for the failures a downloader must survive:
    ignore_range (answer 200 with the whole file), cut_after (send only that many body bytes of the next
    response, then close the connection cleanly). `requests` records (path, Range header) per GET."""

    def __init__(self, files):
        self.files, self.requests = dict(files), []
        self.ignore_range, self.cut_after = False, None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and not server.ignore_range else 0
                if start >= len(body) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("ETag", f'"{hash(body) & 0xFFFFFFFF:x}"')
                self.end_headers()
                data = body[start:]
                if server.cut_after is not None:
                    data, server.cut_after = data[:server.cut_after], None
                self.wfile.write(data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def serving(files):
    """`with serving({"/a.bin": data}) as server: download(server.url + "/a.bin")`."""
    with FileServer(files) as server:
        yield server
