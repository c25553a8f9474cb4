/*
 * local — the transport backend for a file on this machine (our own data dir, the chunk
 * cache, shared storage).
 *
 * A handle is an fd opened read-only; reads are pread() so one handle can serve concurrent
 * ranges without a lock. The open is non-blocking and refuses anything but a regular file, so
 * a FIFO or a device that ends up at a data path cannot hang or feed the caller. A listing
 * reads the whole directory and sorts it by name, so callers see a stable order.
 */
#include "transports/transport.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct local_xport {
	struct xport base;	/* first, so a struct xport * is a struct local_xport * */
	int fd;
	char *path;
};

static struct local_xport *to_local(struct xport *x)
{
	return (struct local_xport *)x;
}

static void set_error(struct local_xport *lx, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(struct local_xport *lx, int err, const char *fmt, ...)
{
	char what[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(lx->base.last_error, sizeof(lx->base.last_error), "%s %s: %s", what, lx->path,
		 strerror(err));
}

static int local_open(const char *location, struct xport **out)
{
	struct local_xport *lx = NULL;
	struct stat st;
	int fd, ret = 0;

	fd = open(location, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
		goto out;
	}
	lx = calloc(1, sizeof(*lx));
	if (!lx) {
		ret = -ENOMEM;
		goto out;
	}
	lx->path = strdup(location);
	if (!lx->path) {
		ret = -ENOMEM;
		goto out;
	}
	lx->base.ops = &xport_local_ops;
	lx->fd = fd;
	fd = -1;
	*out = &lx->base;
	lx = NULL;
out:
	if (lx)
		free(lx->path);
	free(lx);
	if (fd >= 0)
		close(fd);
	return ret;
}

static int local_stat(struct xport *x, struct xport_stat *st)
{
	struct local_xport *lx = to_local(x);
	struct stat sb;
	int ret = 0;

	if (fstat(lx->fd, &sb) < 0) {
		ret = -errno;
		set_error(lx, -ret, "fstat");
		goto out;
	}
	st->size = sb.st_size;
	st->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
out:
	return ret;
}

/* Fills as much of @buf as the file has, so a short count always means EOF. */
static ssize_t local_read_range(struct xport *x, void *buf, size_t len, uint64_t off)
{
	struct local_xport *lx = to_local(x);
	char *p = buf;
	ssize_t ret = 0;
	size_t done = 0;

	if (len > SSIZE_MAX)
		len = SSIZE_MAX;
	if (off > (uint64_t)LLONG_MAX) {
		ret = -EINVAL;
		set_error(lx, EINVAL, "pread at %llu of", (unsigned long long)off);
		goto out;
	}
	while (done < len) {
		ssize_t n = pread(lx->fd, p + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			set_error(lx, (int)-ret, "pread %zu bytes at %llu of", len - done,
				  (unsigned long long)(off + done));
			goto out;
		}
		if (n == 0)
			break;
		done += n;
	}
	ret = done;
out:
	return ret;
}

static int cmp_dirent(const void *a, const void *b)
{
	const struct xport_dirent *da = a, *db = b;

	return strcmp(da->name, db->name);
}

static int local_list(const char *location, struct xport_dirent **out, size_t *n)
{
	struct xport_dirent *list = NULL;
	size_t count = 0, cap = 0;
	struct dirent *de;
	DIR *dir;
	int ret = 0;

	dir = opendir(location);
	if (!dir) {
		ret = -errno;
		goto out;
	}
	for (;;) {
		int is_dir;

		errno = 0;
		de = readdir(dir);
		if (!de) {
			ret = -errno;
			break;
		}
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;

			/* Some filesystems (XFS without ftype, some FUSE ones) leave d_type out. */
			if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				continue;
			is_dir = S_ISDIR(st.st_mode);
		} else {
			is_dir = de->d_type == DT_DIR;
		}
		if (count == cap) {
			size_t ncap = cap ? cap * 2 : 32;
			struct xport_dirent *bigger = realloc(list, ncap * sizeof(*list));

			if (!bigger) {
				ret = -ENOMEM;
				break;
			}
			list = bigger;
			cap = ncap;
		}
		list[count].name = strdup(de->d_name);
		if (!list[count].name) {
			ret = -ENOMEM;
			break;
		}
		list[count].is_dir = is_dir;
		count++;
	}
	if (ret < 0)
		goto out;
	if (count > 1)
		qsort(list, count, sizeof(*list), cmp_dirent);
	*out = list;
	*n = count;
	list = NULL;
out:
	xport_free_list(list, count);
	if (dir)
		closedir(dir);
	return ret;
}

static void local_close(struct xport *x)
{
	struct local_xport *lx = to_local(x);

	close(lx->fd);
	free(lx->path);
	free(lx);
}

const struct xport_ops xport_local_ops = {
	.name = "local",
	.open = local_open,
	.stat = local_stat,
	.read_range = local_read_range,
	.list = local_list,
	.close = local_close,
};
