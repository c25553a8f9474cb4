/*
 * control — the daemon's unix socket (<state_dir>/control.sock) and its client.
 *
 * Server: one listening AF_UNIX stream socket and one thread, "meshfs-ctl", that runs a single
 * poll() over the read end of a stop pipe, the listening socket and every open connection
 * (non-blocking). Per connection: read one JSON request (up to the first newline, or EOF),
 * dispatch on its "cmd", write one JSON line, close. Each connection has a 5 s deadline that
 * covers both the read and the write: a client that connects and never sends (or never reads)
 * is dropped after 5 s, and since connections are multiplexed it delays nobody else. At most
 * CTL_MAX_CONNS are open at once; more wait in the listen backlog. Requests are answered on
 * the thread itself, from in-memory snapshots plus a few catalog queries; the thread holds no
 * lock of its own. control_stop() writes to the pipe and never waits for a client.
 *
 * `sync` and `sync_progress` are the facade's (facade.c): `sync` walks the namespace here and
 * hands a job to the facade's own worker thread, which this module starts and stops with the
 * socket; `sync_progress` only reads that job's counts.
 *
 * Permissions: the socket is made 0666 (umask notwithstanding) because `meshfs status` is
 * meant to work for every user of the machine. The one command that changes anything, `sync`,
 * only queues fetches of cluster data into the cache, which any user of the mount can cause
 * by reading the files. Revisit this (0660 + a group, or SO_PEERCRED checks) when commands
 * that change more (evict, pin) are added here.
 *
 * The stale socket of a daemon that died is removed before bind: the state-dir lock
 * (daemon_lock_state_dir) is held by then, so no live daemon can own it. A path that exists
 * and is not a socket is left alone (-EEXIST).
 *
 * Client: control_request() connects, writes the request line, half-closes, and reads the
 * answer to EOF, all within one 5 s deadline.
 */
#include "sync/control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "sync/config.h"
#include "sync/cache.h"
#include "sync/daemon.h"
#include "sync/facade.h"
#include "sync/log.h"
#include "sync/status.h"
#include "sync/util.h"

#define CTL_SOCK_NAME "control.sock"
#define CTL_DEADLINE_MS 5000
#define CTL_MAX_REQUEST (64 * 1024)
#define CTL_MAX_REPLY (16 * 1024 * 1024)
#define CTL_BACKLOG 16
#define CTL_MAX_CONNS 32

struct control {
	struct daemon *d;
	struct facade *facade;	/* meshfs sync jobs and their worker */
	char *sock_path;
	int listen_fd;
	int stop_pipe[2];	/* [0] polled by the thread, [1] written by control_stop */
	dev_t sock_dev;		/* identity of the socket file we bound, so stop unlinks only it */
	ino_t sock_ino;
	pthread_t thread;
	bool thread_started;
};

/* A growing byte buffer for requests and replies. */
struct ctl_buf {
	char *data;
	size_t len;
	size_t cap;
};

/*
 * Builds <state_dir>/control.sock into @addr. Returns 0, or -ENAMETOOLONG (logged) when the
 * path does not fit in sun_path, or -ENOMEM. *path is a new string on success.
 */
static int sock_addr(const char *state_dir, struct sockaddr_un *addr, char **path)
{
	char *p = path_join(state_dir, CTL_SOCK_NAME);
	int ret = 0;

	if (!p) {
		ret = -ENOMEM;
		goto out;
	}
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	if (strlen(p) >= sizeof(addr->sun_path)) {
		log_msg(LOG_ERR, "control socket path is too long (%zu bytes, at most %zu): %s",
			strlen(p), sizeof(addr->sun_path) - 1, p);
		ret = -ENAMETOOLONG;
		goto out;
	}
	memcpy(addr->sun_path, p, strlen(p) + 1);
	*path = p;
	p = NULL;
out:
	free(p);
	return ret;
}

/*
 * Makes room to receive at least one more byte into @b. The buffer never grows past @max
 * bytes + 1 (so that an oversized message is noticed) + the NUL.
 */
static int buf_grow(struct ctl_buf *b, size_t max)
{
	size_t limit = max + 2;
	size_t cap;
	char *bigger;

	if (b->cap >= b->len + 2)
		return 0;
	cap = b->cap ? b->cap * 2 : 4096;
	if (cap > limit)
		cap = limit;
	bigger = realloc(b->data, cap);
	if (!bigger)
		return -ENOMEM;
	b->data = bigger;
	b->cap = cap;
	return 0;
}

/* Serialises @j as one compact line ending in '\n'. A new string in *out, its length in *len. */
static int dump_line(json_t *j, char **out, size_t *len)
{
	char *s = json_dumps(j, JSON_COMPACT);
	size_t n;
	char *line;

	if (!s)
		return -ENOMEM;
	n = strlen(s);
	line = realloc(s, n + 2);
	if (!line) {
		free(s);
		return -ENOMEM;
	}
	line[n] = '\n';
	line[n + 1] = '\0';
	*out = line;
	*len = n + 1;
	return 0;
}

/* ---- server ---- */

static json_t *cmd_status(struct control *c, json_t *req)
{
	return status_report(c->d);
}

static json_t *cmd_health(struct control *c, json_t *req)
{
	return status_health(c->d);
}

static json_t *cmd_sync(struct control *c, json_t *req)
{
	return facade_sync(c->facade, req);
}

static json_t *cmd_sync_progress(struct control *c, json_t *req)
{
	return facade_progress(c->facade, req);
}

static void check_report(void *arg, const char *category, const char *path, const char *what)
{
	json_array_append_new(arg, json_pack("{s:s, s:s, s:s}", "category", category, "path",
					     path, "problem", what));
}

/* meshfs check: re-verifies the cache; bad chunks are marked absent (quarantined) and listed. */
static json_t *cmd_check(struct control *c, json_t *req)
{
	struct daemon *d = c->d;
	json_t *bad = json_array();
	int n;

	if (!bad)
		return NULL;
	n = d->cache ? cache_check(d->cache, check_report, bad) : 0;
	if (n < 0) {
		json_decref(bad);
		return json_pack("{s:s+}", "error", "cache check: ", strerror(-n));
	}
	return json_pack("{s:i, s:o}", "checked", n, "bad", bad);
}

static const struct {
	const char *name;
	json_t *(*fn)(struct control *c, json_t *req);
} ctl_cmds[] = {
	{ "check", cmd_check },
	{ "status", cmd_status },
	{ "health", cmd_health },
	{ "sync", cmd_sync },
	{ "sync_progress", cmd_sync_progress },
};

static json_t *error_reply(const char *fmt, const char *arg)
{
	return json_pack("{s:s+}", "error", fmt, arg ? arg : "");
}

/* The answer to the request text @text (never NULL unless memory runs out). */
static json_t *dispatch(struct control *c, const char *text, size_t len)
{
	json_error_t jerr;
	json_t *req = json_loadb(text, len, 0, &jerr);
	json_t *resp = NULL;
	const char *cmd;
	size_t i;

	if (!req) {
		resp = error_reply("bad request: ", jerr.text);
		goto out;
	}
	cmd = json_string_value(json_object_get(req, "cmd"));
	if (!json_is_object(req) || !cmd) {
		resp = error_reply("bad request: expected {\"cmd\": \"...\"}", NULL);
		goto out;
	}
	for (i = 0; i < ARRAY_SIZE(ctl_cmds); i++) {
		if (strcmp(cmd, ctl_cmds[i].name) == 0)
			break;
	}
	if (i == ARRAY_SIZE(ctl_cmds)) {
		resp = json_pack("{s:s++}", "error", "unknown command '", cmd, "'");
		goto out;
	}
	resp = ctl_cmds[i].fn(c, req);
	if (!resp)
		resp = error_reply("internal error: cannot build the answer", NULL);
out:
	json_decref(req);
	return resp;
}

/* One client connection: reading its request, then writing the answer. */
struct ctl_conn {
	int fd;
	int64_t deadline;	/* mono_ns */
	struct ctl_buf in;
	char *out;		/* the answer line, once the request is complete */
	size_t out_len;
	size_t out_off;
};

static void conn_close(struct ctl_conn *cn)
{
	close(cn->fd);
	free(cn->in.data);
	free(cn->out);
	memset(cn, 0, sizeof(*cn));
	cn->fd = -1;
}

/* Turns the complete request in cn->in into the answer line in cn->out. */
static int conn_answer(struct control *c, struct ctl_conn *cn, bool too_long)
{
	json_t *resp;
	int ret;

	if (too_long)
		resp = error_reply("bad request: longer than 64 KiB", NULL);
	else
		resp = dispatch(c, cn->in.data ? cn->in.data : "", cn->in.len);
	ret = resp ? dump_line(resp, &cn->out, &cn->out_len) : -ENOMEM;
	json_decref(resp);
	if (ret < 0)
		log_msg(LOG_WARNING, "control: out of memory answering a request");
	/* A long command (check) must not eat the time to send its own answer. */
	cn->deadline = mono_ns() + (int64_t)CTL_DEADLINE_MS * 1000000;
	return ret;
}

/*
 * Moves one connection forward without blocking: reads what has arrived and, once the
 * request is complete (a newline or EOF), builds the answer and sends what the socket takes.
 * Returns 1 when the connection is finished (answered or failed), 0 to keep polling it.
 */
static int conn_step(struct control *c, struct ctl_conn *cn)
{
	while (!cn->out) {
		ssize_t n;
		char *nl;

		if (buf_grow(&cn->in, CTL_MAX_REQUEST) < 0)
			return 1;
		n = recv(cn->fd, cn->in.data + cn->in.len, cn->in.cap - cn->in.len - 1, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			log_msg(LOG_DEBUG, "control: dropping a client: %s", strerror(errno));
			return 1;
		}
		nl = n > 0 ? memchr(cn->in.data + cn->in.len, '\n', n) : NULL;
		cn->in.len += n;
		if (nl)
			cn->in.len = nl - cn->in.data;
		cn->in.data[cn->in.len] = '\0';
		if (n == 0 || nl || cn->in.len > CTL_MAX_REQUEST) {
			if (conn_answer(c, cn, cn->in.len > CTL_MAX_REQUEST) < 0)
				return 1;
		}
	}
	while (cn->out_off < cn->out_len) {
		ssize_t n = send(cn->fd, cn->out + cn->out_off, cn->out_len - cn->out_off,
				 MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			log_msg(LOG_DEBUG, "control: reply not delivered: %s", strerror(errno));
			return 1;
		}
		cn->out_off += n;
	}
	return 1;
}

/* Accepts what is waiting into free slots of @conns. */
static void accept_conns(struct control *c, struct ctl_conn *conns, size_t *n_conns)
{
	while (*n_conns < CTL_MAX_CONNS) {
		int fd = accept4(c->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct ctl_conn *cn;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				/* Out of fds and the like: pause instead of spinning on poll. */
				log_msg(LOG_WARNING, "control: accept: %s", strerror(errno));
				poll(NULL, 0, 100);
			}
			break;
		}
		cn = &conns[(*n_conns)++];
		memset(cn, 0, sizeof(*cn));
		cn->fd = fd;
		cn->deadline = mono_ns() + (int64_t)CTL_DEADLINE_MS * 1000000;
	}
}

/*
 * The "meshfs-ctl" thread: one poll() over the stop pipe, the listening socket and every
 * open connection, so a slow client delays nobody else. While CTL_MAX_CONNS connections are
 * open, new ones wait in the listen backlog.
 */
static void *ctl_thread(void *arg)
{
	struct control *c = arg;
	struct ctl_conn conns[CTL_MAX_CONNS];
	struct pollfd pfd[2 + CTL_MAX_CONNS];
	size_t n_conns = 0;

	pthread_setname_np(pthread_self(), "meshfs-ctl");
	for (;;) {
		int64_t now = mono_ns(), next = INT64_MAX;
		int timeout = -1;
		size_t i, kept;

		pfd[0] = (struct pollfd){ .fd = c->stop_pipe[0], .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = n_conns < CTL_MAX_CONNS ? c->listen_fd : -1,
					  .events = POLLIN };
		for (i = 0; i < n_conns; i++) {
			pfd[2 + i] = (struct pollfd){ .fd = conns[i].fd,
						      .events = conns[i].out ? POLLOUT : POLLIN };
			if (conns[i].deadline < next)
				next = conns[i].deadline;
		}
		if (n_conns)
			timeout = next > now ? (int)((next - now) / 1000000) + 1 : 0;
		if (poll(pfd, 2 + n_conns, timeout) < 0) {
			if (errno == EINTR)
				continue;
			log_msg(LOG_ERR, "control: poll: %s", strerror(errno));
			break;
		}
		if (pfd[0].revents)
			break;
		now = mono_ns();
		for (i = 0, kept = 0; i < n_conns; i++) {
			bool done = false;

			if (pfd[2 + i].revents)
				done = conn_step(c, &conns[i]);
			if (!done && now >= conns[i].deadline) {
				log_msg(LOG_DEBUG, "control: dropping a client after %d ms",
					CTL_DEADLINE_MS);
				done = true;
			}
			if (done)
				conn_close(&conns[i]);
			else
				conns[kept++] = conns[i];
		}
		n_conns = kept;
		if (pfd[1].revents)
			accept_conns(c, conns, &n_conns);
	}
	for (size_t i = 0; i < n_conns; i++)
		conn_close(&conns[i]);
	return NULL;
}

/* Removes a socket file left by a daemon that died; -EEXIST if @path is something else. */
static int remove_stale(const char *path)
{
	struct stat st;
	int ret = 0;

	if (lstat(path, &st) < 0) {
		if (errno != ENOENT)
			ret = -errno;
		goto out;
	}
	if (!S_ISSOCK(st.st_mode)) {
		log_msg(LOG_ERR, "control: %s exists and is not a socket; not replacing it", path);
		ret = -EEXIST;
		goto out;
	}
	if (unlink(path) < 0 && errno != ENOENT)
		ret = -errno;
	else
		log_msg(LOG_DEBUG, "control: removed stale socket %s", path);
out:
	return ret;
}

/*
 * Binds <state_dir>/control.sock (replacing a stale socket), makes it 0666 and starts the
 * facade's "meshfs-sync" worker and the "meshfs-ctl" thread. Returns 0 and *out (release with
 * control_stop), or -errno with the reason logged; nothing is left behind on failure.
 */
int control_start(struct daemon *d, struct control **out)
{
	struct control *c = calloc(1, sizeof(*c));
	struct sockaddr_un addr;
	struct stat st;
	bool bound = false;
	int ret;

	if (!c)
		return -ENOMEM;
	c->d = d;
	c->listen_fd = -1;
	c->stop_pipe[0] = c->stop_pipe[1] = -1;
	ret = sock_addr(d->cfg->state_dir, &addr, &c->sock_path);
	if (ret < 0)
		goto out;
	ret = remove_stale(c->sock_path);
	if (ret < 0) {
		if (ret != -EEXIST)
			log_msg(LOG_ERR, "control: cannot remove stale %s: %s", c->sock_path,
				strerror(-ret));
		goto out;
	}
	c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->listen_fd < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "control: socket: %s", strerror(errno));
		goto out;
	}
	if (bind(c->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "control: cannot bind %s: %s", c->sock_path, strerror(errno));
		goto out;
	}
	bound = true;
	/* bind() applied the umask; the socket is meant to be usable by every local user. */
	if (chmod(c->sock_path, 0666) < 0 || lstat(c->sock_path, &st) < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "control: cannot set up %s: %s", c->sock_path, strerror(errno));
		goto out;
	}
	c->sock_dev = st.st_dev;
	c->sock_ino = st.st_ino;
	if (listen(c->listen_fd, CTL_BACKLOG) < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "control: listen on %s: %s", c->sock_path, strerror(errno));
		goto out;
	}
	if (pipe2(c->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "control: pipe: %s", strerror(errno));
		goto out;
	}
	ret = facade_start(d, &c->facade);
	if (ret < 0)
		goto out;
	ret = -pthread_create(&c->thread, NULL, ctl_thread, c);
	if (ret < 0) {
		log_msg(LOG_ERR, "control: cannot start thread: %s", strerror(-ret));
		goto out;
	}
	c->thread_started = true;
	log_msg(LOG_DEBUG, "control: listening on %s", c->sock_path);
	*out = c;
	c = NULL;
out:
	if (c) {
		if (bound)
			unlink(c->sock_path);
		control_stop(c);
	}
	return ret;
}

/*
 * Stops the thread (an in-progress connection is abandoned) and then the facade's sync worker
 * (queued fetches stay queued), closes the socket and removes its file if it is still the one
 * we bound. @c may be NULL or half set up.
 */
void control_stop(struct control *c)
{
	struct stat st;

	if (!c)
		return;
	if (c->thread_started) {
		if (write(c->stop_pipe[1], "x", 1) < 0)
			log_msg(LOG_WARNING, "control: cannot signal the thread: %s",
				strerror(errno));
		pthread_join(c->thread, NULL);
	}
	/* After the control thread: no request can reach the facade any more. */
	facade_stop(c->facade);
	if (c->listen_fd >= 0) {
		close(c->listen_fd);
		if (c->sock_ino && lstat(c->sock_path, &st) == 0 && st.st_dev == c->sock_dev &&
		    st.st_ino == c->sock_ino)
			unlink(c->sock_path);
	}
	if (c->stop_pipe[0] >= 0)
		close(c->stop_pipe[0]);
	if (c->stop_pipe[1] >= 0)
		close(c->stop_pipe[1]);
	free(c->sock_path);
	free(c);
}

/*
 * Stops the facade's sync worker, which drives the fetcher: called before the fetcher stops.
 * `sync` requests get an error from then on; the socket keeps serving the rest.
 */
void control_stop_sync(struct control *c)
{
	if (c)
		facade_quiesce(c->facade);
}

/* ---- client ---- */

/*
 * Waits until @fd is ready for @events or the deadline (mono_ns) passes (-ETIMEDOUT). Errors
 * and hang-ups count as ready: the following recv or send reports them.
 */
static int wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int ret;

	for (;;) {
		int64_t left_ms = (deadline - mono_ns()) / 1000000;
		int n;

		if (left_ms <= 0) {
			ret = -ETIMEDOUT;
			break;
		}
		n = poll(&pfd, 1, (int)left_ms);
		if (n < 0 && errno != EINTR) {
			ret = -errno;
			break;
		}
		if (n > 0) {
			ret = 0;
			break;
		}
	}
	return ret;
}

/* Reads the non-blocking @fd to EOF into @b (NUL-terminated); over @max bytes: -EMSGSIZE. */
static int read_msg(int fd, struct ctl_buf *b, size_t max, int64_t deadline)
{
	int ret;

	for (;;) {
		ssize_t n;

		ret = buf_grow(b, max);
		if (ret < 0)
			goto out;
		n = recv(fd, b->data + b->len, b->cap - b->len - 1, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				ret = -errno;
				goto out;
			}
			ret = wait_fd(fd, POLLIN, deadline);
			if (ret < 0)
				goto out;
			continue;
		}
		if (n == 0)
			break;
		b->len += n;
		if (b->len > max) {
			ret = -EMSGSIZE;
			goto out;
		}
	}
	b->data[b->len] = '\0';
out:
	return ret;
}

/* Sends all of @data on the non-blocking @fd before the deadline. */
static int write_msg(int fd, const char *data, size_t len, int64_t deadline)
{
	int ret = 0;

	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				ret = -errno;
				goto out;
			}
			ret = wait_fd(fd, POLLOUT, deadline);
			if (ret < 0)
				goto out;
			continue;
		}
		data += n;
		len -= n;
	}
out:
	return ret;
}

/* Connects to @addr, waiting at most until @deadline for room in the listen backlog. */
static int connect_deadline(int fd, const struct sockaddr_un *addr, int64_t deadline)
{
	int64_t left_us = (deadline - mono_ns()) / 1000;
	struct timeval tv = {
		.tv_sec = left_us / 1000000,
		.tv_usec = left_us % 1000000,
	};
	int ret = 0;

	/* A blocking AF_UNIX connect waits for backlog room, bounded by SO_SNDTIMEO. */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		ret = -errno;
		goto out;
	}
	while (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
		if (errno == EINTR && mono_ns() < deadline)
			continue;
		ret = (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -ETIMEDOUT
										 : -errno;
		goto out;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		ret = -errno;
out:
	return ret;
}

/*
 * Sends @req to the daemon of @state_dir and returns its answer (a JSON object) in *resp.
 * -ENOENT/-ECONNREFUSED when no daemon listens, -ETIMEDOUT after 5 s, -EPROTO for an answer
 * that is not a JSON object. The caller owns *resp.
 */
int control_request(const char *state_dir, json_t *req, json_t **resp)
{
	return control_request_timeout(state_dir, req, resp, CTL_DEADLINE_MS);
}

int control_request_timeout(const char *state_dir, json_t *req, json_t **resp, int timeout_ms)
{
	int64_t deadline = mono_ns() + (int64_t)timeout_ms * 1000000;
	struct ctl_buf reply = { 0 };
	struct sockaddr_un addr;
	char *path = NULL, *line = NULL;
	json_error_t jerr;
	json_t *j = NULL;
	size_t len;
	int fd = -1;
	int ret;

	ret = sock_addr(state_dir, &addr, &path);
	if (ret < 0)
		goto out;
	ret = dump_line(req, &line, &len);
	if (ret < 0)
		goto out;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	ret = connect_deadline(fd, &addr, deadline);
	if (ret < 0)
		goto out;
	ret = write_msg(fd, line, len, deadline);
	if (ret < 0)
		goto out;
	shutdown(fd, SHUT_WR);
	ret = read_msg(fd, &reply, CTL_MAX_REPLY, deadline);
	if (ret < 0)
		goto out;
	j = json_loadb(reply.data, reply.len, 0, &jerr);
	if (!j || !json_is_object(j)) {
		log_msg(LOG_DEBUG, "control: bad answer from %s: %s", path,
			j ? "not an object" : jerr.text);
		ret = -EPROTO;
		goto out;
	}
	*resp = j;
	j = NULL;
out:
	json_decref(j);
	if (fd >= 0)
		close(fd);
	free(reply.data);
	free(line);
	free(path);
	return ret;
}
