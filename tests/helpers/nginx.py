"""An nginx configuration for a foreground, single-worker test server in a temp dir."""

from __future__ import annotations


def nginx_conf(tmp: str, listen: str, *, server: str = "", http: str = "",
               worker_connections: int = 64) -> str:
    """Serve {tmp}/www on `listen` ("addr:port", optionally "... http2"); `server` and
    `http` are extra directives for those blocks.  Every path nginx writes is in tmp."""
    return f"""daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/error.log;
pid {tmp}/nginx.pid;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    {http}
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {listen};
        root {tmp}/www;
        {server}
    }}
}}
"""
