/*
 * transport — the backend registry and the generic xport_* calls.
 *
 * Backends are a fixed, compiled-in table looked up by name; there is no runtime
 * registration, so the table needs no lock. The generic calls only dispatch through the
 * handle's ops and keep argument checking in one place, so a backend can assume it is
 * given a handle of its own kind and sane arguments.
 */
#include "transports/transport.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const struct xport_ops *const backends[] = {
	&xport_local_ops,
};

const struct xport_ops *xport_find(const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (strcmp(backends[i]->name, name) == 0)
			return backends[i];
	return NULL;
}

int xport_open(const char *backend, const char *location, struct xport **out)
{
	const struct xport_ops *ops = xport_find(backend);
	struct xport *x = NULL;
	int ret;

	if (!ops)
		return -EPROTONOSUPPORT;
	if (!location || !out)
		return -EINVAL;
	ret = ops->open(location, &x);
	if (ret < 0)
		return ret;
	/* Backends set this too; doing it here means the generic calls never depend on it. */
	x->ops = ops;
	*out = x;
	return 0;
}

int xport_stat(struct xport *x, struct xport_stat *st)
{
	if (!x || !st)
		return -EINVAL;
	return x->ops->stat(x, st);
}

ssize_t xport_read_range(struct xport *x, void *buf, size_t len, uint64_t off)
{
	if (!x || (!buf && len))
		return -EINVAL;
	return x->ops->read_range(x, buf, len, off);
}

int xport_list(const char *backend, const char *location, struct xport_dirent **out, size_t *n)
{
	const struct xport_ops *ops = xport_find(backend);

	if (!ops)
		return -EPROTONOSUPPORT;
	if (!location || !out || !n)
		return -EINVAL;
	if (!ops->list)
		return -EOPNOTSUPP;
	return ops->list(location, out, n);
}

void xport_free_list(struct xport_dirent *list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++)
		free(list[i].name);
	free(list);
}

void xport_close(struct xport *x)
{
	if (x)
		x->ops->close(x);
}

const char *xport_last_error(const struct xport *x)
{
	return x ? x->last_error : "";
}
