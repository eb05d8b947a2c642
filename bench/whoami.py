# A test workload: answers every GET with its member id, the X-Forwarded-For and the request target
# it saw (which must be in origin form: `/path`, as from a browser).
import http.server
import os

MEMBER = os.environ.get("NUBO_MEMBER_ID", "?")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("%s %s %s" % (MEMBER, self.headers.get("X-Forwarded-For", "-"), self.path)).encode()
        self.send_response(200 if self.path.startswith("/") else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
