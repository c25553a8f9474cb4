/*
 * dataserver_files — the data server's file routes: GET /v1/chunks/<cat>/<path> (the chunk
 * hashes of this node's current version, JSON) and GET /v1/files/<cat>/<path> (its content,
 * sendfile from the fd, a single Range, ETag and If-Match/If-Range). The server itself
 * (sockets, dispatch, authentication, responses, counters) is sync/dataserver.c.
 *
 * MHD normally percent-decodes the URL before we see it, which would turn "..%2f" into "../"
 * and cut a path at "%00". dataserver.c gives it an unescape callback that leaves the URL as
 * sent, and file paths are decoded here one segment at a time (parse_file_url), so an encoded
 * '/' or NUL is refused instead of being reinterpreted. Files are then opened beneath the
 * category directory with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), and only when the
 * catalog lists them as this node's live version and the open file still has the identity the
 * catalog recorded when it was hashed (inode, size, mtime, ctime): otherwise the ETag could
 * lie, and the answer is 503 "version changed" until the indexer has republished it.
 *
 * The ETag of a version is its content hash; a chunk list is read in two catalog calls and
 * used only when the entry's seq did not move between them, so it always belongs to the
 * version the ETag names.
 */
#include "sync/dataserver_int.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <linux/openat2.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sync/cache.h"
#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/daemon.h"
#include "sync/hash.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/util.h"

#define CHUNKS_TRIES 3
/* Block hashes sent with one range at most: one chunk's worth (docs/protocol.md). */
#define FILES_MAX_BLOCKS HASH_BLOCKS_PER_CHUNK
/* Ranges up to this are read into memory and sent with the header (small_range_response). */
#define FILES_SMALL_RANGE (256 * 1024)

/* ---- versions: ETag, If-Match ---- */

/* The ETag of @h: the hash's text form in double quotes. */
static void format_etag(const struct hash128 *h, char out[HASH_STR_LEN + 2])
{
	char text[HASH_STR_LEN];

	hash_format(h, text);
	snprintf(out, HASH_STR_LEN + 2, "\"%s\"", text);
}

/*
 * True when the request has no If-Match, or its If-Match is "*" or lists @etag. The
 * comparison is strong: a weak tag (W/"...") never matches.
 */
static bool if_match_ok(struct MHD_Connection *conn, const char *etag)
{
	const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						    MHD_HTTP_HEADER_IF_MATCH);
	size_t elen = strlen(etag);

	if (!h)
		return true;
	while (*h) {
		const char *end;

		while (*h == ' ' || *h == '\t' || *h == ',')
			h++;
		end = h;
		while (*end && *end != ',')
			end++;
		while (end > h && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if ((end - h == 1 && *h == '*') ||
		    ((size_t)(end - h) == elen && memcmp(h, etag, elen) == 0))
			return true;
		h = end;
		while (*h && *h != ',')
			h++;
	}
	return false;
}

/* ---- paths ---- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decodes @raw, the still percent-encoded "<category>/<path>" part of a chunks or files URL,
 * one '/'-separated segment at a time. Returns 0 with the category's index in *cat_idx and
 * the decoded path below it in *path (a new string); -EINVAL (400) for a malformed escape, an
 * empty, "." or ".." segment, a NUL, control character or '/' inside a segment, or a path
 * longer than PATH_MAX; -ENOENT (404) for an unknown category or nothing below it.
 */
static int parse_file_url(const struct mfs_config *cfg, const char *raw, size_t *cat_idx,
			  char **path)
{
	char *buf = malloc(strlen(raw) + 1), *o, *slash;
	const char *p = raw;
	int ret = -EINVAL, idx;

	if (!buf)
		return -ENOMEM;
	o = buf;
	for (;;) {
		const char *seg = o;
		size_t len;

		while (*p && *p != '/') {
			unsigned char c = (unsigned char)*p;

			if (c == '%') {
				int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);

				if (lo < 0)
					goto out;
				c = (unsigned char)(hi << 4 | lo);
				p += 3;
			} else {
				p++;
			}
			if (c < 0x20 || c == 0x7f || c == '/')
				goto out;
			*o++ = (char)c;
		}
		len = (size_t)(o - seg);
		if (len == 0 || (len == 1 && seg[0] == '.') ||
		    (len == 2 && seg[0] == '.' && seg[1] == '.'))
			goto out;
		if (!*p)
			break;
		*o++ = '/';
		p++;
	}
	*o = '\0';
	if (o - buf >= PATH_MAX)
		goto out;
	ret = -ENOENT;
	slash = strchr(buf, '/');
	if (!slash)
		goto out;
	*slash = '\0';
	idx = config_category_index(cfg, buf);
	if (idx < 0)
		goto out;
	ret = -EINVAL;
	if (!path_is_clean_relative(slash + 1))
		goto out;
	ret = -ENOMEM;
	*path = strdup(slash + 1);
	if (!*path)
		goto out;
	*cat_idx = (size_t)idx;
	ret = 0;
out:
	free(buf);
	return ret;
}

/* What the routes need of one catalog entry. */
struct entry_copy {
	bool deleted;
	bool replica;		/* another host's version this node holds in its cache */
	int64_t seq;
	uint64_t size;
	int64_t mtime_ns;
	struct hash128 hash;
	uint64_t ino;
	int64_t ctime_ns;
};

static void copy_entry(void *arg, const struct cat_entry *e)
{
	struct entry_copy *c = arg;

	c->deleted = e->deleted;
	c->replica = strcmp(e->origin, e->host) != 0;
	c->seq = e->seq;
	c->size = e->size;
	c->mtime_ns = e->mtime_ns;
	c->hash = e->hash;
	c->ino = e->ino;
	c->ctime_ns = e->ctime_ns;
}

/* This node's live entry (category @cat_idx, @path): 0, -ENOENT (none or deleted), -errno. */
static int own_entry(struct dataserver *s, size_t cat_idx, const char *path,
		     struct entry_copy *out)
{
	struct daemon *d = dataserver_daemon(s);
	const struct mfs_config *cfg = d->cfg;
	int ret;

	memset(out, 0, sizeof(*out));
	ret = catalog_get(d->catalog, cfg->node, cfg->categories[cat_idx].name, path,
			  copy_entry, out);
	if (ret == 0 && out->deleted)
		ret = -ENOENT;
	return ret;
}

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

/*
 * Opens this node's complete cached copy of version @e (a replica entry, catalog_replicas.c).
 * Returns 0 and an fd of its own in *fd, or -ESTALE when the copy is not (or no longer) here
 * complete: the replica entry is withdrawn by AutoSync's next pass.
 */
static int open_replica(struct dataserver *s, size_t cat_idx, const char *rel,
			const struct entry_copy *e, int *fd_out)
{
	struct daemon *d = dataserver_daemon(s);
	const char *category = d->cfg->categories[cat_idx].name;
	struct cache_info info;
	struct cache_file *cf = NULL;
	int ret;

	if (!d->cache || cache_lookup(d->cache, category, rel, &info) < 0 ||
	    info.state != CACHE_COMPLETE || !hash_equal(&info.hash, &e->hash))
		return -ESTALE;
	ret = cache_file_get(d->cache, category, rel, &e->hash, e->size, &cf);
	if (ret < 0)
		return ret;
	if (!cache_file_complete(cf)) {
		ret = -ESTALE;
	} else {
		*fd_out = fcntl(cache_file_fd(cf), F_DUPFD_CLOEXEC, 0);
		ret = *fd_out < 0 ? -errno : 0;
	}
	cache_file_put(cf);
	return ret;
}

/*
 * Opens the version @e of @rel beneath category @cat_idx's directory, never through a symlink
 * and never outside the directory. Returns 0 and a blocking read-only fd in *fd; -ENOENT,
 * -ELOOP (a symlink on the way), -EXDEV (an escape) and the like when it cannot be opened;
 * -ESTALE when what is there now is not the version the catalog describes (not a regular
 * file, or another inode, size, mtime or ctime than when it was hashed).
 */
static int open_version(struct dataserver *s, size_t cat_idx, const char *rel,
			const struct entry_copy *e, int *fd_out)
{
	struct daemon *d = dataserver_daemon(s);
	struct open_how how = {
		/* O_NONBLOCK: a FIFO put in the file's place must not hang the thread. */
		.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	const char *dir = ns_category_dir(d->ns, cat_idx);
	struct stat st;
	int dfd = -1, fd = -1, flags, ret;

	if (e->replica)
		return open_replica(s, cat_idx, rel, e, fd_out);
	if (!dir)
		return -ENOENT;
	dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ret = -errno;
		goto out;
	}
	fd = (int)syscall(SYS_openat2, dfd, rel, &how, sizeof(how));
	if (fd < 0) {
		ret = -errno;
		if (ret == -ELOOP || ret == -EXDEV)
			log_msg(LOG_INFO, "data server: refused %s/%s: %s",
				d->cfg->categories[cat_idx].name, rel,
				ret == -ELOOP ? "a symlink on the way" : "leads outside");
		else if (ret == -ENOSYS)
			log_msg(LOG_ERR, "data server: this kernel has no openat2 (Linux >= 5.6 "
				"needed); files cannot be served");
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != e->size ||
	    ts_ns(&st.st_mtim) != e->mtime_ns || (e->ino && (uint64_t)st.st_ino != e->ino) ||
	    (e->ctime_ns && ts_ns(&st.st_ctim) != e->ctime_ns)) {
		ret = -ESTALE;
		goto out;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
		ret = -errno;
		goto out;
	}
	*fd_out = fd;
	fd = -1;
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	return ret;
}

/* ---- ranges ---- */

enum range_kind {
	RANGE_WHOLE,		/* no (usable) Range: the whole content, 200 */
	RANGE_PART,		/* one satisfiable range, 206 */
	RANGE_UNSATISFIABLE,	/* 416 */
};

/* Reads decimal digits at *p, saturating at UINT64_MAX. False if there are none. */
static bool parse_u64(const char **p, uint64_t *v)
{
	const char *q = *p;
	uint64_t n = 0;

	if (*q < '0' || *q > '9')
		return false;
	for (; *q >= '0' && *q <= '9'; q++) {
		unsigned d = (unsigned)(*q - '0');

		n = n > (UINT64_MAX - d) / 10 ? UINT64_MAX : n * 10 + d;
	}
	*p = q;
	*v = n;
	return true;
}

/*
 * Interprets a Range header value for content of @size bytes: "bytes=A-B", "bytes=A-" or
 * "bytes=-N" give [*first, *first + *len). A header that is not one well-formed byte range
 * (another unit, several ranges, B < A) is ignored, as RFC 9110 allows: the whole content.
 */
static enum range_kind parse_range(const char *h, uint64_t size, uint64_t *first, uint64_t *len)
{
	const char *p = h;
	uint64_t a = 0, b = UINT64_MAX;
	bool suffix;

	*first = 0;
	*len = size;
	if (strncasecmp(p, "bytes=", 6) != 0)
		return RANGE_WHOLE;
	p += 6;
	while (*p == ' ' || *p == '\t')
		p++;
	suffix = *p == '-';
	if (suffix) {
		p++;
		if (!parse_u64(&p, &b))
			return RANGE_WHOLE;
	} else {
		if (!parse_u64(&p, &a) || *p++ != '-')
			return RANGE_WHOLE;
		if (*p >= '0' && *p <= '9' && !parse_u64(&p, &b))
			return RANGE_WHOLE;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p)
		return RANGE_WHOLE;
	if (suffix) {
		if (b == 0 || size == 0)
			return RANGE_UNSATISFIABLE;
		*first = b >= size ? 0 : size - b;
		*len = size - *first;
		return RANGE_PART;
	}
	if (b < a)
		return RANGE_WHOLE;
	if (a >= size)
		return RANGE_UNSATISFIABLE;
	*first = a;
	*len = (b >= size - 1 ? size - 1 : b) - a + 1;
	return RANGE_PART;
}

/* The range to send: from Range, unless an If-Range names another version than @etag. */
static enum range_kind pick_range(struct MHD_Connection *conn, const char *etag, uint64_t size,
				  uint64_t *first, uint64_t *len)
{
	const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							MHD_HTTP_HEADER_RANGE);
	const char *if_range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							   MHD_HTTP_HEADER_IF_RANGE);

	*first = 0;
	*len = size;
	if (!range || (if_range && strcmp(if_range, etag) != 0))
		return RANGE_WHOLE;
	return parse_range(range, size, first, len);
}

/* ---- GET /v1/chunks/<category>/<path> ---- */

/*
 * The entry and its chunk list come from two catalog calls; the entry is read again after the
 * chunks, and the pair is used only when its seq did not move in between (a new version
 * always takes a new seq), so the hashes always belong to the version the ETag names.
 */
static int get_chunks(struct dataserver *s, size_t cat_idx, const char *path,
		      struct entry_copy *e, struct hash128 **chunks, size_t *n)
{
	struct daemon *d = dataserver_daemon(s);
	const char *category = d->cfg->categories[cat_idx].name;
	struct entry_copy again;
	int ret = -ESTALE;

	for (int i = 0; i < CHUNKS_TRIES; i++) {
		ret = own_entry(s, cat_idx, path, e);
		if (ret < 0)
			break;
		ret = catalog_get_chunks(d->catalog, d->cfg->node, category, path, chunks,
					 n);
		if (ret < 0)
			continue;	/* deleted meanwhile: the next look says so */
		ret = own_entry(s, cat_idx, path, &again);
		if (ret == 0 && again.seq == e->seq)
			break;
		free(*chunks);
		*chunks = NULL;
		ret = ret < 0 ? ret : -ESTALE;
	}
	return ret;
}

/*
 * Writes the ETag of version @hash into @etag, and answers 412 (in *ret) when the request's
 * If-Match names another version. Returns true when it answered.
 */
static bool other_version(struct dataserver *s, struct request *rq, struct MHD_Connection *conn,
			  const struct hash128 *hash, char etag[HASH_STR_LEN + 2],
			  enum MHD_Result *ret)
{
	format_etag(hash, etag);
	if (if_match_ok(conn, etag))
		return false;
	*ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_PRECONDITION_FAILED,
					"the path holds another version", MHD_HTTP_HEADER_ETAG,
					etag);
	return true;
}

enum MHD_Result dataserver_route_chunks(struct dataserver *s, struct request *rq,
					struct MHD_Connection *conn, const char *raw)
{
	const struct mfs_config *cfg = dataserver_daemon(s)->cfg;
	struct hash128 *chunks = NULL;
	struct entry_copy e;
	char etag[HASH_STR_LEN + 2], hash[HASH_STR_LEN], *path = NULL;
	json_t *body = NULL, *list;
	enum MHD_Result ret;
	size_t cat_idx = 0, n = 0;
	int err;

	err = parse_file_url(cfg, raw, &cat_idx, &path);
	if (err == 0)
		err = get_chunks(s, cat_idx, path, &e, &chunks, &n);
	if (err < 0) {
		ret = dataserver_respond_errno(s, rq, conn, err);
		goto out;
	}
	if (other_version(s, rq, conn, &e.hash, etag, &ret))
		goto out;
	if (n != (e.size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE) {
		log_msg(LOG_ERR, "data server: %s/%s: the catalog has %zu chunk hashes for %llu "
			"bytes", cfg->categories[cat_idx].name, path, n,
			(unsigned long long)e.size);
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
					       "inconsistent chunk list", NULL, NULL);
		goto out;
	}
	hash_format(&e.hash, hash);
	list = json_array();
	body = json_pack("{s:s,s:s,s:I,s:I,s:s,s:I,s:o}", "category",
			 cfg->categories[cat_idx].name, "path", path, "size", (json_int_t)e.size,
			 "mtime_ns", (json_int_t)e.mtime_ns, "hash", hash, "chunk_size",
			 (json_int_t)HASH_CHUNK_SIZE, "chunks", list);
	for (size_t i = 0; body && i < n; i++) {
		hash_format(&chunks[i], hash);
		if (json_array_append_new(list, json_string(hash)) < 0) {
			json_decref(body);
			body = NULL;
		}
	}
	if (!body) {
		/* A path that is not UTF-8 cannot be written as JSON. */
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
					       "cannot encode the chunk list", NULL, NULL);
		goto out;
	}
	ret = dataserver_respond_json(s, rq, conn, MHD_HTTP_OK, body, MHD_HTTP_HEADER_ETAG, etag);
out:
	json_decref(body);
	free(chunks);
	free(path);
	return ret;
}

/* ---- GET /v1/files/<category>/<path> ---- */

/*
 * The X-Meshfs-Blocks value for a range of @len bytes at @first of version @e, into a new
 * string: "<block size> <first block> <hash>,<hash>...". NULL when the client did not ask
 * (X-Meshfs-Want-Blocks), the range is not whole blocks (the file's end excepted) or longer
 * than FILES_MAX_BLOCKS, or the catalog has no block hashes for it: the client then verifies
 * whole chunks, as without the header.
 */
static char *blocks_header(struct dataserver *s, struct MHD_Connection *conn, size_t cat_idx,
			   const char *path, const struct entry_copy *e, uint64_t first,
			   uint64_t len)
{
	struct daemon *d = dataserver_daemon(s);
	struct hash128 hashes[FILES_MAX_BLOCKS];
	uint64_t nb = (len + HASH_BLOCK_SIZE - 1) / HASH_BLOCK_SIZE;
	size_t cap = 32 + (size_t)nb * HASH_STR_LEN, used;
	char *out;

	if (!MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Meshfs-Want-Blocks") ||
	    len == 0 || first % HASH_BLOCK_SIZE != 0 || nb > FILES_MAX_BLOCKS ||
	    (len % HASH_BLOCK_SIZE != 0 && first + len != e->size))
		return NULL;
	if (catalog_get_blocks(d->catalog, d->cfg->node, d->cfg->categories[cat_idx].name, path,
			       &e->hash, first / HASH_BLOCK_SIZE, (size_t)nb, hashes) < 0)
		return NULL;
	out = malloc(cap);
	if (!out)
		return NULL;
	used = (size_t)snprintf(out, cap, "%llu %llu ", (unsigned long long)HASH_BLOCK_SIZE,
				(unsigned long long)(first / HASH_BLOCK_SIZE));
	for (uint64_t i = 0; i < nb; i++) {
		hash_format(&hashes[i], out + used);
		used += HASH_STR_LEN - 1;
		if (i + 1 < nb)
			out[used++] = ',';
	}
	out[used] = '\0';
	return out;
}

/*
 * A response with the @len bytes at @first of @fd read into memory, which MHD sends in one
 * write with the header: a small range (a probe, a random read) then reaches the client in one
 * piece, where sendfile() sends the header and the body apart and wakes the client twice.
 * NULL with *err = -errno when the read fails (-ESTALE: the file is shorter now, the version
 * is gone), NULL with *err = 0 when out of memory.
 */
static struct MHD_Response *small_range_response(int fd, uint64_t first, uint64_t len, int *err)
{
	struct MHD_Response *resp;
	char *buf = malloc((size_t)len);
	struct stat st;

	*err = 0;
	if (!buf)
		return NULL;
	*err = pread_full(fd, buf, (size_t)len, first);
	if (*err == -EIO && fstat(fd, &st) == 0 && (uint64_t)st.st_size < first + len)
		*err = -ESTALE; /* cut short: another version is being written there */
	if (*err) {
		free(buf);
		return NULL;
	}
	resp = MHD_create_response_from_buffer((size_t)len, buf, MHD_RESPMEM_MUST_FREE);
	if (!resp)
		free(buf);
	return resp;
}

enum MHD_Result dataserver_route_files(struct dataserver *s, struct request *rq,
				       struct MHD_Connection *conn, const char *raw)
{
	struct MHD_Response *resp = NULL;
	struct entry_copy e;
	char etag[HASH_STR_LEN + 2], crange[80], *path = NULL, *blocks = NULL;
	enum range_kind kind;
	enum MHD_Result ret;
	uint64_t first = 0, len = 0;
	size_t cat_idx = 0;
	int err, fd = -1;

	err = parse_file_url(dataserver_daemon(s)->cfg, raw, &cat_idx, &path);
	if (err == 0)
		err = own_entry(s, cat_idx, path, &e);
	if (err < 0) {
		ret = dataserver_respond_errno(s, rq, conn, err);
		goto out;
	}
	if (other_version(s, rq, conn, &e.hash, etag, &ret))
		goto out;
	err = open_version(s, cat_idx, path, &e, &fd);
	if (err < 0) {
		ret = dataserver_respond_errno(s, rq, conn, err);
		goto out;
	}
	kind = pick_range(conn, etag, e.size, &first, &len);
	if (kind == RANGE_UNSATISFIABLE) {
		snprintf(crange, sizeof(crange), "bytes */%llu", (unsigned long long)e.size);
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_RANGE_NOT_SATISFIABLE,
					       "range not satisfiable",
					       MHD_HTTP_HEADER_CONTENT_RANGE, crange);
		goto out;
	}
	if (kind == RANGE_PART)
		blocks = blocks_header(s, conn, cat_idx, path, &e, first, len);
	if (len == 0) {
		resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	} else if (len <= FILES_SMALL_RANGE && !dataserver_is_head(rq)) {
		resp = small_range_response(fd, first, len, &err);
		if (!resp && err) {
			ret = dataserver_respond_errno(s, rq, conn, err);
			goto out;
		}
	} else {
		/* MHD owns the fd from here (closed with the response) and sends it with
		 * sendfile. */
		resp = MHD_create_response_from_fd_at_offset64(len, fd, first);
		if (resp)
			fd = -1;
	}
	if (!resp) {
		ret = MHD_NO;
		goto out;
	}
	snprintf(crange, sizeof(crange), "bytes %llu-%llu/%llu", (unsigned long long)first,
		 (unsigned long long)(first + len - 1), (unsigned long long)e.size);
	if (!dataserver_add_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				   "application/octet-stream") ||
	    !dataserver_add_header(resp, MHD_HTTP_HEADER_ETAG, etag) ||
	    !dataserver_add_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes") ||
	    (kind == RANGE_PART &&
	     !dataserver_add_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, crange)) ||
	    (blocks && !dataserver_add_header(resp, "X-Meshfs-Blocks", blocks))) {
		MHD_destroy_response(resp);
		ret = MHD_NO;
		goto out;
	}
	ret = dataserver_queue(s, rq, conn,
			       kind == RANGE_PART ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, resp,
			       len);
out:
	if (fd >= 0)
		close(fd);
	free(blocks);
	free(path);
	return ret;
}
