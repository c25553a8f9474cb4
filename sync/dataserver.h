/*
 * dataserver — this node's HTTP data server (libmicrohttpd, internal thread pool).
 *
 * Serves the HTTP protocol of INTERFACE.md and docs/protocol.md on
 * cfg->listen_host:cfg->listen_port: manifests, chunk lists, files (ranges, sendfile), notify,
 * health and metrics. Requests other than /v1/health need "Authorization: Bearer <token>" when
 * the config has a token (compared in constant time), else 401.
 */
#ifndef MESHFS_DATASERVER_H
#define MESHFS_DATASERVER_H

struct daemon;
struct dataserver;

/* Binds and starts serving. -EADDRINUSE when the port is taken, other -errno otherwise. */
int dataserver_start(struct daemon *d, struct dataserver **out);
void dataserver_stop(struct dataserver *s);

#endif
