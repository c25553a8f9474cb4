/*
 * dataserver — this node's HTTP data server on libmicrohttpd.
 *
 * The listening socket is made here, not by MHD: MHD_start_daemon() reports a taken port
 * only as NULL (errno unreliable), while our own bind() gives the real errno, so "port in
 * use" reaches the user as -EADDRINUSE. The bound socket is handed to MHD with
 * MHD_OPTION_LISTEN_SOCKET; MHD runs its own epoll loop on a pool of 4 threads, drops a
 * connection idle for 30 s, and closes the socket in MHD_stop_daemon().
 *
 * Routes today: GET (or HEAD) /v1/health answers status_health() without authentication.
 * Everything else first needs "Authorization: Bearer <token>" when the config has a token
 * (compared in constant time; 401 otherwise), then: non-GET -> 405, any path -> 404 (the
 * manifest, chunk and file endpoints come with the cluster issue). Bodies are JSON.
 *
 * The listen address is cfg->listen_host: a numeric IPv4/IPv6 address, "localhost"
 * (127.0.0.1), or, failing both, a host name resolved once at start (a hosts entry's address
 * may be a name). INTERFACE.md requires a token for any non-loopback listen: without one the
 * server refuses to start (-EINVAL, logged) rather than serve the cluster's data to anyone.
 */
#include "sync/dataserver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/config.h"
#include "sync/daemon.h"
#include "sync/log.h"
#include "sync/status.h"

#define DS_THREADS 4
#define DS_MAX_CONNECTIONS 256
#define DS_CONNECTION_TIMEOUT_S 30
#define DS_BACKLOG 128

struct dataserver {
	struct daemon *d;
	struct MHD_Daemon *mhd;
	char *expected_auth;	/* "Bearer <token>", NULL when the config has no token */
	size_t expected_len;
};

__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];
	size_t n;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	/* MHD reports client misbehaviour here too (resets, bad requests): not our errors. */
	log_msg(LOG_INFO, "data server: %s", buf);
}

/* ---- responses ---- */

/*
 * Queues @body (borrowed) as a JSON response with @code, plus one optional header. Returns
 * what MHD_queue_response returns; MHD_NO (the connection is closed) when memory runs out.
 */
static enum MHD_Result respond_json(struct MHD_Connection *conn, unsigned code, json_t *body,
				    const char *hname, const char *hval)
{
	enum MHD_Result ret = MHD_NO;
	struct MHD_Response *resp = NULL;
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	char *line;
	size_t len;

	if (!text)
		goto out;
	len = strlen(text);
	line = realloc(text, len + 2);
	if (!line)
		goto out;
	text = line;
	text[len++] = '\n';
	text[len] = '\0';
	resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp)
		goto out;
	text = NULL;	/* owned by resp */
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") ==
		    MHD_NO ||
	    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") == MHD_NO ||
	    (hname && MHD_add_response_header(resp, hname, hval) == MHD_NO))
		goto out;
	ret = MHD_queue_response(conn, code, resp);
out:
	if (resp)
		MHD_destroy_response(resp);
	free(text);
	return ret;
}

static enum MHD_Result respond_error(struct MHD_Connection *conn, unsigned code,
				     const char *msg, const char *hname, const char *hval)
{
	json_t *body = json_pack("{s:s}", "error", msg);
	enum MHD_Result ret = respond_json(conn, code, body, hname, hval);

	json_decref(body);
	return ret;
}

/* ---- authentication ---- */

/*
 * Compares @given with the @elen bytes of @expected in time that depends only on the two
 * lengths, never on where they first differ.
 */
static bool ct_equal(const char *given, const char *expected, size_t elen)
{
	size_t glen = strlen(given);
	volatile unsigned char diff = glen != elen;

	for (size_t i = 0; i < elen; i++)
		diff |= (unsigned char)expected[i] ^ (unsigned char)(i < glen ? given[i] : 0);
	return diff == 0;
}

static bool authorized(struct dataserver *s, struct MHD_Connection *conn)
{
	const char *auth;

	if (!s->expected_auth)
		return true;
	auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	return auth && ct_equal(auth, s->expected_auth, s->expected_len);
}

/* ---- routes ---- */

static enum MHD_Result route_health(struct dataserver *s, struct MHD_Connection *conn)
{
	json_t *health = status_health(s->d);
	enum MHD_Result ret;

	if (health)
		ret = respond_json(conn, MHD_HTTP_OK, health, NULL, NULL);
	else
		ret = respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				    "cannot build the health report", NULL, NULL);
	json_decref(health);
	return ret;
}

/*
 * The access handler, called at least twice per request: once when the headers are in,
 * then for each piece of body, then with *upload_data_size == 0 when the request is
 * complete. Rejections (401, 405) are queued on the first call, so an unwanted body is never
 * read (MHD closes such a connection after the response). Answers to accepted GETs are
 * queued on the last call, which keeps the connection reusable; a body sent with a GET is
 * read and ignored.
 */
static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
				      const char *method, const char *version,
				      const char *upload_data, size_t *upload_data_size,
				      void **con_cls)
{
	struct dataserver *s = cls;
	bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
		   strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
	bool health = get && strcmp(url, "/v1/health") == 0;
	enum MHD_Result ret = MHD_YES;

	if (!*con_cls) {
		*con_cls = s;	/* marks the headers as seen */
		if (!health && !authorized(s, conn))
			ret = respond_error(conn, MHD_HTTP_UNAUTHORIZED, "unauthorized",
					    MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
		else if (!get)
			ret = respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
					    "method not allowed", MHD_HTTP_HEADER_ALLOW,
					    "GET, HEAD");
	} else if (*upload_data_size) {
		*upload_data_size = 0;
	} else if (health) {
		ret = route_health(s, conn);
	} else {
		ret = respond_error(conn, MHD_HTTP_NOT_FOUND, "not found", NULL, NULL);
	}
	return ret;
}

/* ---- the listening socket ---- */

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

static void addr_text(const struct sockaddr *sa, socklen_t len, char *buf, size_t buflen)
{
	char host[INET6_ADDRSTRLEN] = "?", port[8] = "?";

	getnameinfo(sa, len, host, sizeof(host), port, sizeof(port),
		    NI_NUMERICHOST | NI_NUMERICSERV);
	snprintf(buf, buflen, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/* Resolves @host for a passive TCP socket on @port: numeric first, then as a name. */
static int resolve(const char *host, int port, struct addrinfo **res)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
	};
	char portstr[8];
	int rc;

	if (strcmp(host, "localhost") == 0)
		host = "127.0.0.1";
	snprintf(portstr, sizeof(portstr), "%d", port);
	rc = getaddrinfo(host, portstr, &hints, res);
	if (rc == EAI_NONAME) {
		hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_ADDRCONFIG;
		rc = getaddrinfo(host, portstr, &hints, res);
	}
	if (rc != 0) {
		log_msg(LOG_ERR, "data server: cannot resolve listen address '%s': %s", host,
			rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -EINVAL;
	}
	return 0;
}

/*
 * Binds and listens on cfg->listen_host:listen_port. Returns 0 and the socket in *fd, or
 * -errno of the failed bind (-EADDRINUSE for a taken port), logged with the address.
 */
static int bind_listen(const struct mfs_config *cfg, int *fd_out)
{
	struct addrinfo *res = NULL;
	char where[INET6_ADDRSTRLEN + 16];
	int fd = -1, ret;
	const int on = 1;

	if (cfg->listen_port < 0 || cfg->listen_port > 65535) {
		log_msg(LOG_ERR, "data server: bad listen port %d", cfg->listen_port);
		ret = -EINVAL;
		goto out;
	}
	ret = resolve(cfg->listen_host ? cfg->listen_host : "127.0.0.1", cfg->listen_port, &res);
	if (ret < 0)
		goto out;
	ret = -EADDRNOTAVAIL;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		addr_text(ai->ai_addr, ai->ai_addrlen, where, sizeof(where));
		if (!cfg->token && !is_loopback(ai->ai_addr)) {
			log_msg(LOG_ERR, "data server: refusing to listen on %s without a "
				"cluster_token_file (required for any non-loopback listen)", where);
			ret = -EINVAL;
			continue;
		}
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			ret = -errno;
			log_msg(LOG_ERR, "data server: socket for %s: %s", where, strerror(errno));
			continue;
		}
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
		    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, DS_BACKLOG) < 0) {
			ret = -errno;
			log_msg(LOG_ERR, "data server: cannot listen on %s: %s", where,
				strerror(errno));
			close(fd);
			fd = -1;
			continue;
		}
		log_msg(LOG_INFO, "data server listening on %s", where);
		ret = 0;
		break;
	}
	if (ret == 0) {
		*fd_out = fd;
		fd = -1;
	}
out:
	if (fd >= 0)
		close(fd);
	if (res)
		freeaddrinfo(res);
	return ret;
}

static void free_server(struct dataserver *s)
{
	if (s->expected_auth)
		explicit_bzero(s->expected_auth, s->expected_len);
	free(s->expected_auth);
	free(s);
}

/*
 * Binds cfg->listen_host:listen_port and starts MHD's thread pool. Returns 0 and *out
 * (release with dataserver_stop), -EADDRINUSE when the port is taken, other -errno otherwise;
 * the reason is logged.
 */
int dataserver_start(struct daemon *d, struct dataserver **out)
{
	const struct mfs_config *cfg = d->cfg;
	struct dataserver *s = calloc(1, sizeof(*s));
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	struct stat before, after;
	int fd = -1, ret;

	if (!s)
		return -ENOMEM;
	s->d = d;
	if (cfg->token) {
		if (asprintf(&s->expected_auth, "Bearer %s", cfg->token) < 0) {
			s->expected_auth = NULL;
			ret = -ENOMEM;
			goto out;
		}
		s->expected_len = strlen(s->expected_auth);
	}
	ret = bind_listen(cfg, &fd);
	if (ret < 0)
		goto out;
	flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL
								   : MHD_USE_POLL;
	if (fstat(fd, &before) < 0) {
		ret = -errno;
		goto out;
	}
	s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle_request, s,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				  MHD_OPTION_LISTEN_SOCKET, fd,
				  MHD_OPTION_THREAD_POOL_SIZE, (unsigned)DS_THREADS,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)DS_MAX_CONNECTIONS,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)DS_CONNECTION_TIMEOUT_S,
				  MHD_OPTION_END);
	if (!s->mhd) {
		log_msg(LOG_ERR, "data server: libmicrohttpd failed to start");
		ret = -EIO;
		/* Depending on where it failed, MHD may already have closed the socket: close
		 * it only if the descriptor still refers to the same socket. */
		if (fstat(fd, &after) < 0 || after.st_ino != before.st_ino ||
		    after.st_dev != before.st_dev)
			fd = -1;
		goto out;
	}
	fd = -1;	/* MHD owns it now and closes it in MHD_stop_daemon */
	*out = s;
	s = NULL;
out:
	if (fd >= 0)
		close(fd);
	if (s)
		free_server(s);
	return ret;
}

/* Stops accepting, finishes the MHD threads (open connections are closed) and frees @s. */
void dataserver_stop(struct dataserver *s)
{
	if (!s)
		return;
	if (s->mhd)
		MHD_stop_daemon(s->mhd);
	free_server(s);
}
