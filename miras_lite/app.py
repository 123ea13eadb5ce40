"""``python -m miras_lite.app [NOTEBOOKS] [options]``: the notebook app (`make app`), safe on a shared machine.

It runs ``marimo run NOTEBOOKS`` (default: the repository's notebooks/ folder) in this process with two guards,
as Jupyter does:

* **a token**, random unless given (``--token-password TEXT`` or ``--token-password-file PATH``). Every page,
  API call and WebSocket needs it (marimo's session authentication: the ``access_token`` query parameter, then a
  session cookie), and the URL to open, with the token, is printed at start. ``--no-token`` turns it off (the
  origin checks stay).
* **origin checks** (`OriginGuard`, a middleware added to marimo's server): a request whose ``Host`` header
  names neither an IP address, ``localhost``, the ``--host`` the server listens on nor an ``--allow-host`` is
  refused (DNS rebinding: a page of another site whose name now points at this machine), and so is a request,
  WebSocket or HTTP, whose ``Origin`` header is not this server's own origin nor an ``--allow-origins`` entry (a
  cross-site WebSocket or POST from any page open in the user's browser). A refused WebSocket handshake gets
  HTTP 403; requests without an Origin header (non-browser clients) still need the token.

Other options are passed to ``marimo run`` (e.g. ``--headless``, ``--session-ttl=60``: an option that takes a
value as ``--option=value``); ``--sandbox`` is refused, because it would run the server in another process
without the origin checks.

The gallery shows each notebook's card with the title and description of the notebook's docstring (its first
line, then the rest; `notebook_card`) and, for a numbered notebook (``NN_name.py``), a picture of its place in
the course (`course_picture`) instead of marimo's placeholder, which repeats the title. marimo reads a card's
text from a ``[tool.marimo.opengraph]`` table in the notebook's script metadata too, and takes it first, but
warns on every run of such a notebook that its config reader ignores that table.
"""

from __future__ import annotations

import argparse
import ast
import ipaddress
import re
import secrets
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 2718
GUARD_NAME = "miras_lite.origin_guard"
CARD_PICTURE = "miras-lite-card.png"  # beside marimo's own thumbnail (opengraph.png), which is shown first
_LOCAL_NAMES = ("localhost",)
_WILDCARDS = ("0.0.0.0", "::", "")


def _split_host(value):
    """'name:port' / '[v6]:port' / 'name' -> (name lower-cased, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name, port = value, None
    return name, (int(port) if port and port.isdigit() else None)


def _is_loopback(name):
    if name in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ip(name):
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class OriginGuard:
    """ASGI middleware refusing requests whose Host is not this server or whose Origin is another site's.

    hosts: host names (besides IP addresses and localhost) the server may be reached by; origins: extra
    allowed origins ("scheme://host:port"), besides the request's own."""

    def __init__(self, app, hosts=(), origins=()):
        self.app = app
        self.hosts = {h.lower().strip("[]") for h in hosts}
        self.origins = {o.lower().rstrip("/") for o in origins}

    def host_allowed(self, host):
        name, _ = _split_host(host)
        return bool(name) and (_is_ip(name) or name in _LOCAL_NAMES or name in self.hosts)

    def origin_allowed(self, origin, host):
        """The request's own origin (same host and port as its Host header), or this server under another of its
        local names (localhost / 127.0.0.1 / ::1, --host, --allow-host) on the same port, or an --allow-origins entry."""
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file:// pages) and anything else
        default = 443 if parts.scheme == "https" else 80
        (name, port), (host_name, host_port) = _split_host(parts.netloc), _split_host(host)
        if (port or default) != (host_port or default):
            return False  # another port: another server, e.g. a page served by another local program
        return name == host_name or _is_loopback(name) or name in self.hosts

    def refusal(self, scope):
        """Why the request must be refused, or None."""
        headers = {}
        for key, value in scope.get("headers", ()):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return f"Host {host!r} is not this server (allowed: an IP address, localhost, {sorted(self.hosts)})"
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return f"Origin {origin!r} is not this server's origin nor an allowed one"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        reason = self.refusal(scope)
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # closing before accepting: the handshake is answered with HTTP 403
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "forbidden origin"})
            return
        body = f"403 Forbidden: {reason}\n".encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def notebook_card(path):
    """(title, description or None) from the docstring of the notebook at `path`, or None without one."""
    try:
        doc = ast.get_docstring(ast.parse(Path(path).read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError):
        return None
    if not doc:
        return None
    title, _, rest = doc.partition("\n")
    return title.strip(), " ".join(rest.split()) or None


def course_picture(number, numbers):
    """An SVG card (1200 × 630) with the notebook's number in large type and one dot per notebook of the course
    (`numbers`), the current one filled: where the notebook stands, without repeating its title."""
    step = min(90, 960 // max(len(numbers), 1))
    dots = "".join(
        f'<circle cx="{140 + i * step}" cy="500" r="18" fill="{"#59b39a" if n == number else "#ffffff"}" '
        f'stroke="#59b39a" stroke-width="4"/>'
        for i, n in enumerate(numbers))
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="630" viewBox="0 0 1200 630">'
            '<rect width="1200" height="630" fill="#f8fafc"/>'
            '<rect x="48" y="48" width="1104" height="534" rx="24" fill="#ffffff" stroke="#e2e8f0" stroke-width="2"/>'
            '<rect x="48" y="48" width="16" height="534" fill="#59b39a"/>'
            f'<text x="120" y="380" font-family="sans-serif" font-size="280" font-weight="700" fill="#0f172a">'
            f'{number:02d}</text>'
            '<text x="1100" y="120" text-anchor="end" font-family="sans-serif" font-size="36" font-weight="600" '
            'fill="#64748b">miras-lite</text>'
            f'{dots}</svg>')


def _numbered(folder):
    """{number: path} of the NN_*.py files in `folder`."""
    return {int(match.group(1)): path for path in sorted(Path(folder).glob("*.py"))
            if (match := re.match(r"(\d+)_", path.name))}


def write_course_pictures(paths):
    """Render `course_picture` as a PNG for every numbered notebook among `paths` (files or folders) into marimo's
    output folder of the notebook (__marimo__/assets/STEM/, where the gallery may serve pictures from);
    returns the files written or already current."""
    import vl_convert

    from marimo._metadata.opengraph import default_opengraph_image_abs

    pictures = []
    for path in map(Path, paths):
        course = _numbered(path if path.is_dir() else path.parent)
        for number, notebook in course.items():
            if not (path.is_dir() or notebook.resolve() == path.resolve()):
                continue
            picture = default_opengraph_image_abs(str(notebook)).with_name(CARD_PICTURE)
            png = vl_convert.svg_to_png(course_picture(number, sorted(course)))
            if not picture.is_file() or picture.read_bytes() != png:
                picture.parent.mkdir(parents=True, exist_ok=True)
                picture.write_bytes(png)
            pictures.append(picture)
    return pictures


def install_gallery_cards():
    """Make marimo's gallery read a card's title and description from the notebook's docstring (`notebook_card`)
    and show its course picture, where the notebook's script metadata declares none of these."""
    from marimo._metadata import opengraph

    declared = opengraph.read_opengraph_from_file
    if getattr(declared, "miras_lite", False):
        return

    def read(filepath):
        config = declared(filepath) or opengraph.OpenGraphConfig()
        card = notebook_card(filepath) or (None, None)
        image = config.image
        thumbnail = opengraph.default_opengraph_image_abs(filepath)  # `marimo export thumbnail` writes it
        if image is None and not thumbnail.is_file() and thumbnail.with_name(CARD_PICTURE).is_file():
            image = str(Path(opengraph.default_opengraph_image(filepath)).with_name(CARD_PICTURE))
        return opengraph.OpenGraphConfig(title=config.title or card[0], description=config.description or card[1],
                                         image=image, generator=config.generator)

    read.miras_lite = True
    opengraph.read_opengraph_from_file = read


def _free_port(host, start=DEFAULT_PORT):
    """The first port from `start` that `host` can bind (marimo's rule, decided here so the URL is known)."""
    bind = "0.0.0.0" if host in _WILDCARDS else host
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as sock:
            try:
                sock.bind((bind, port))
            except OSError:
                continue
            return port
    raise ValueError(f"--port: no free port in {start}..{start + 99} on {host}; give --port")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m miras_lite.app", description=__doc__.split("\n\n")[0],
                                epilog="Other options are passed to `marimo run`; give those that take a value as "
                                       "--option=value (e.g. --session-ttl=60).")
    p.add_argument("notebooks", nargs="*", help="notebook files or folders (default: the notebooks/ folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("-p", "--port", type=int, default=None, help=f"port (default: the first free one from {DEFAULT_PORT})")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token-password", default=None, help="the token (default: a random one, printed in the URL)")
    token.add_argument("--token-password-file", default=None, help="a file holding the token")
    token.add_argument("--no-token", action="store_true", help="no token (origin checks stay on)")
    token.add_argument("--token", action="store_true", help="a random token (the default)")
    p.add_argument("--allow-origins", action="append", default=[], metavar="ORIGIN",
                   help="another origin allowed to connect, e.g. https://proxy.example:443 (repeatable)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another host name this server may be reached by, e.g. a proxy's (repeatable)")
    return p


def _token(args):
    if args.no_token:
        return None
    if args.token_password_file:
        try:
            text = Path(args.token_password_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ValueError(f"--token-password-file={args.token_password_file!r} cannot be read "
                             f"({error.strerror or error})") from None
        if not text:
            raise ValueError(f"--token-password-file={args.token_password_file!r} is empty")
        return text
    return args.token_password or secrets.token_urlsafe(24)


def main(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if any(a == "--sandbox" or a.startswith("--sandbox=") for a in rest):
        parser.error("--sandbox runs the server in another process, without the origin checks; it is not supported")
    try:
        token = _token(args)
        port = args.port or _free_port(args.host)
    except ValueError as error:
        parser.error(str(error))
    if not 0 < port < 65536:
        parser.error(f"--port={port} must be in 1..65535")
    for notebook in args.notebooks:
        if not Path(notebook).exists():
            parser.error(f"notebooks: {notebook!r} is not a notebook file or folder (an option of `marimo run` that "
                         "takes a value is given as --option=value)")
    hosts = set(args.allow_host)
    if args.host not in _WILDCARDS:
        hosts.add(args.host)
    else:  # every interface: the names of this machine
        hosts |= {socket.gethostname(), socket.getfqdn()}

    from marimo._cli.cli import main as marimo_main
    from marimo._server.registry import MIDDLEWARE_REGISTRY
    from starlette.middleware import Middleware

    notebooks = args.notebooks or [str(ROOT / "notebooks")]
    install_gallery_cards()
    write_course_pictures(notebooks)
    MIDDLEWARE_REGISTRY.register(GUARD_NAME, Middleware(OriginGuard, hosts=sorted(hosts), origins=args.allow_origins))
    if GUARD_NAME not in MIDDLEWARE_REGISTRY.names():
        parser.error(f"the origin checks could not be installed (is {GUARD_NAME} on a MARIMO_SERVER_ASGI_MIDDLEWARE "
                     "deny list?)")
    shown = "localhost" if args.host in ("127.0.0.1", *_WILDCARDS) else args.host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"
    print(f"# miras-lite app: open {url}" + (f"?access_token={token}" if token else "") +
          ("" if token else "  (no token: anyone who can reach the port can use it)"), flush=True)
    marimo_args = ["run", *notebooks, "--host", args.host, "--port", str(port),
                   "--no-sandbox", *sum((["--allow-origins", o] for o in args.allow_origins), []), *rest]
    marimo_args += ["--token-password", token] if token else ["--no-token"]
    return marimo_main(args=marimo_args, prog_name="marimo", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
