/*
 * transport — how bytes move between nodes, behind one small vtable.
 *
 * fs/ and sync/ include only this header. Each backend (local files now; HTTP, SFTP and
 * aria2 with the cluster issues) lives in a file of its own and fills in a struct
 * xport_ops. A struct xport is one open source of one file version: open it, read ranges,
 * close it. Errors are -errno; the human-readable detail of the last one is kept per handle.
 */
#ifndef MESHFS_TRANSPORT_H
#define MESHFS_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct xport;

struct xport_stat {
	uint64_t size;
	int64_t mtime_ns;
};

/* One entry of a directory listing; name is owned by the listing. */
struct xport_dirent {
	char *name;
	int is_dir;
};

struct xport_ops {
	const char *name;
	/* Opens @location (backend-specific: a path, a URL). 0 or -errno; *out owned by caller. */
	int (*open)(const char *location, struct xport **out);
	int (*stat)(struct xport *x, struct xport_stat *st);
	/* Reads up to @len bytes at @off into @buf. Returns bytes read (0 at EOF) or -errno. */
	ssize_t (*read_range)(struct xport *x, void *buf, size_t len, uint64_t off);
	/* Lists the directory at @location into a new array; free with xport_free_list(). */
	int (*list)(const char *location, struct xport_dirent **out, size_t *n);
	void (*close)(struct xport *x);
};

/* Every handle starts with this header so the generic calls below can reach it. */
struct xport {
	const struct xport_ops *ops;
	char last_error[256];
};

/* The backend registered under @name ("local", …), or NULL. */
const struct xport_ops *xport_find(const char *name);

int xport_open(const char *backend, const char *location, struct xport **out);
int xport_stat(struct xport *x, struct xport_stat *st);
ssize_t xport_read_range(struct xport *x, void *buf, size_t len, uint64_t off);
int xport_list(const char *backend, const char *location, struct xport_dirent **out, size_t *n);
void xport_free_list(struct xport_dirent *list, size_t n);
void xport_close(struct xport *x);
/* The detail of the last error on @x, "" if none. Owned by @x. */
const char *xport_last_error(const struct xport *x);

extern const struct xport_ops xport_local_ops;

#endif
