/*
 * config — loads the meshfs YAML configuration into an immutable struct mfs_config.
 *
 * The file is read whole and loaded with yaml_parser_load() into one yaml_document_t, which
 * is then walked section by section. Every node keeps its line, so an error can name the
 * file, the line and the key ("FILE:LINE: key 'a.b': expected ..., got '...'"). The walk is
 * driven by what meshfs knows: a key it does not know is warned about once per key path and
 * its value is never looked into. That is what lets an existing distributed_hosts.yaml, full
 * of keys for other tools, load unchanged.
 *
 * The cluster's existing tools read the same file with PyYAML, so maps are first flattened
 * the way PyYAML sees them (map_pairs): merge keys ("<<: *defaults") are applied, a key given
 * twice keeps its later value (with a warning here), and an empty or null value means the key
 * is not set.
 *
 * Paths: a relative path in the file is taken relative to the directory of the config file,
 * so the file means the same whatever the daemon's working directory is. A leading "~/" is
 * $HOME for the paths this node itself opens (cluster_token_file, state_dir, ssh_key, and its
 * own root, storage_paths and shared_storage); another host's "~/" paths are kept as written,
 * since only that host (or its ssh login shell) knows its home.
 */
#include "sync/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "sync/log.h"
#include "sync/util.h"

#define NODE_ID_FILE "/etc/meshfs/node-id"
#define DEFAULT_STATE_ROOT "/var/lib/meshfs"
/* Far beyond any real hosts file; only a guard against loading something else by mistake. */
#define MAX_CONFIG_BYTES (16u << 20)
/* Merge keys can reach back to an enclosing anchor; this bounds that cycle. */
#define MAX_MERGE_DEPTH 8
#define KEY_MAX 320
/* How much of the known host list a "node not found" error shows. */
#define HOST_LIST_MAX 200

struct loader {
	const char *file;	/* as the caller named it, for messages */
	char *base_dir;		/* absolute dir of the file: relative paths start here */
	yaml_document_t doc;
	bool have_doc;
	char *err;
	size_t errlen;
	char **warned;		/* "kind:key path" of each warning given, to give it once */
	size_t n_warned;
	struct mfs_config *cfg;
	const char *node_source;	/* where cfg->node came from, for messages */
	bool node_from_key;
	/* The key and value that gave this node's own address, for the token error. */
	const char *self_addr_key;
	const yaml_node_t *self_addr_node;
};

/* Where a map sits: its key path for errors, and for warnings with host names folded to '*'. */
struct sect {
	const char *err;
	const char *warn;
};

struct kv {
	const char *key;
	yaml_node_t *key_node;
	yaml_node_t *val;
};

struct kvlist {
	struct kv *v;
	size_t n, cap;
};

enum ftype {
	F_BOOL,
	F_INT_POS,	/* integer >= 1 */
	F_INT_NONNEG,	/* integer >= 0 */
	F_PORT,
	F_NUM,		/* number >= 0, may be fractional */
	F_STR,
	F_SPECIAL,	/* handled by the section's own code */
};

/* One known key of a map and where its value goes (offset into the section's struct). */
struct field {
	const char *name;
	enum ftype type;
	size_t off;
};

static const char *const strategy_names[] = {
	[CFG_STRATEGY_AUTO] = "auto",
	[CFG_STRATEGY_HYBRID] = "hybrid",
	[CFG_STRATEGY_EPHEMERAL] = "ephemeral",
	[CFG_STRATEGY_BROADCAST] = "broadcast",
};

static const char *const inactive_status[] = {
	"terminated", "offline", "retired", "archived", "setup",
};

static const struct {
	const char *name;
	unsigned bit;
} transport_names[] = {
	{ "http", CFG_XPORT_HTTP },
	{ "ssh", CFG_XPORT_SSH },
	{ "aria2", CFG_XPORT_ARIA2 },
};

static const struct {
	const char *name;
	const char *path;
} default_categories[] = {
	{ "games", "data/games" },
	{ "models", "models" },
	{ "training", "data/training" },
};

/* ---- messages ---------------------------------------------------------------------------- */

static size_t node_line(const yaml_node_t *node)
{
	return node ? node->start_mark.line + 1 : 0;
}

static const char *scalar_str(const yaml_node_t *node)
{
	return (const char *)node->data.scalar.value;
}

/* An empty, "~" or "null" plain scalar: PyYAML's None, which meshfs reads as "not set". */
static bool is_null(const yaml_node_t *node)
{
	const char *v;

	if (!node)
		return true;
	if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	v = scalar_str(node);
	return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") ||
	       !strcmp(v, "NULL");
}

/* Control bytes as '?': a message stays one line whatever the file holds. */
static void sanitize(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

/* What @node holds, for "got ...": the quoted scalar, shortened. @len must be >= 72. */
static const char *describe(const yaml_node_t *node, char *buf, size_t len)
{
	const char *v;
	size_t i, o = 0;

	if (is_null(node))
		return "nothing";
	if (node->type == YAML_SEQUENCE_NODE)
		return "a list";
	if (node->type == YAML_MAPPING_NODE)
		return "a map";
	v = scalar_str(node);
	buf[o++] = '\'';
	for (i = 0; v[i] && o + 5 < len && i < 60; i++)
		buf[o++] = v[i];
	if (v[i])
		o += snprintf(buf + o, len - o, "...");
	buf[o++] = '\'';
	buf[o] = '\0';
	return buf;
}

/*
 * Writes the one error line into ld->err: "FILE:LINE: key 'KEY': MESSAGE", leaving out the
 * line or the key when there is none. Returns -EINVAL so callers can return it directly.
 */
static int fail(struct loader *ld, const yaml_node_t *node, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(struct loader *ld, const yaml_node_t *node, const char *key, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!ld->err || ld->errlen == 0)
		goto out;
	if (node && key)
		snprintf(ld->err, ld->errlen, "%s:%zu: key '%s': %s", ld->file, node_line(node),
			 key, msg);
	else if (node)
		snprintf(ld->err, ld->errlen, "%s:%zu: %s", ld->file, node_line(node), msg);
	else if (key)
		snprintf(ld->err, ld->errlen, "%s: key '%s': %s", ld->file, key, msg);
	else
		snprintf(ld->err, ld->errlen, "%s: %s", ld->file, msg);
	sanitize(ld->err);
out:
	return -EINVAL;
}

/* "prefix.key" (or "key") in @buf; a path too long is cut, which only shortens a message. */
static const char *keypath(char *buf, size_t len, const char *prefix, const char *key)
{
	int n;

	if (prefix && *prefix)
		n = snprintf(buf, len, "%s.%s", prefix, key);
	else
		n = snprintf(buf, len, "%s", key);
	if (n < 0)
		buf[0] = '\0';
	sanitize(buf);
	return buf;
}

/*
 * Remembers @kind + @path; returns 1 when it is new (the caller should warn), 0 when it was
 * warned about before, -ENOMEM.
 */
static int first_time(struct loader *ld, const char *kind, const char *path)
{
	char **grown;
	char *tag = NULL;
	int ret = 0;

	if (asprintf(&tag, "%s:%s", kind, path) < 0) {
		tag = NULL;
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ld->n_warned; i++)
		if (strcmp(ld->warned[i], tag) == 0)
			goto out;
	grown = realloc(ld->warned, (ld->n_warned + 1) * sizeof(*grown));
	if (!grown) {
		ret = -ENOMEM;
		goto out;
	}
	ld->warned = grown;
	ld->warned[ld->n_warned++] = tag;
	tag = NULL;
	ret = 1;
out:
	free(tag);
	return ret;
}

static int warn_unknown(struct loader *ld, const struct kv *kv, const char *warn_prefix)
{
	char path[KEY_MAX];
	int ret;

	keypath(path, sizeof(path), warn_prefix, kv->key);
	ret = first_time(ld, "unknown", path);
	if (ret > 0) {
		log_msg(LOG_WARNING, "config %s:%zu: ignoring unknown key '%s'", ld->file,
			node_line(kv->key_node), path);
		ret = 0;
	}
	return ret;
}

/* ---- maps as PyYAML sees them ------------------------------------------------------------ */

static yaml_node_t *doc_node(struct loader *ld, int index)
{
	return yaml_document_get_node(&ld->doc, index);
}

static bool is_merge_key(const yaml_node_t *key)
{
	return key->type == YAML_SCALAR_NODE && key->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
	       strcmp(scalar_str(key), "<<") == 0;
}

static const struct kv *kv_find(const struct kvlist *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].key, key) == 0)
			return &l->v[i];
	return NULL;
}

static int kv_push(struct kvlist *l, yaml_node_t *key, yaml_node_t *val)
{
	struct kv *grown;
	int ret = 0;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;

		grown = realloc(l->v, cap * sizeof(*grown));
		if (!grown) {
			ret = -ENOMEM;
			goto out;
		}
		l->v = grown;
		l->cap = cap;
	}
	l->v[l->n++] = (struct kv){ scalar_str(key), key, val };
out:
	return ret;
}

static void kvlist_free(struct kvlist *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static int check_key(struct loader *ld, const yaml_node_t *key, const struct sect *s)
{
	char got[96];
	int ret = 0;

	if (!key || key->type != YAML_SCALAR_NODE)
		ret = fail(ld, key, s->err, "expected a string as key, got %s",
			   key ? describe(key, got, sizeof(got)) : "nothing");
	else if (strlen(scalar_str(key)) != key->data.scalar.length)
		ret = fail(ld, key, s->err, "a key contains a NUL byte");
	return ret;
}

static int map_pairs_at(struct loader *ld, yaml_node_t *map, const struct sect *s, int depth,
			struct kvlist *out);

static int merge_into(struct loader *ld, yaml_node_t *src, const struct sect *s, int depth,
		      struct kvlist *out)
{
	char got[96];
	int ret = 0;

	if (src && src->type == YAML_MAPPING_NODE) {
		ret = map_pairs_at(ld, src, s, depth + 1, out);
	} else if (src && src->type == YAML_SEQUENCE_NODE) {
		/* Earlier maps win, as in PyYAML: each adds only keys not seen yet. */
		for (yaml_node_item_t *it = src->data.sequence.items.start;
		     ret == 0 && it < src->data.sequence.items.top; it++) {
			yaml_node_t *m = doc_node(ld, *it);

			if (!m || m->type != YAML_MAPPING_NODE)
				ret = fail(ld, m, s->err, "expected a map to merge ('<<'), got %s",
					   m ? describe(m, got, sizeof(got)) : "nothing");
			else
				ret = map_pairs_at(ld, m, s, depth + 1, out);
		}
	} else {
		ret = fail(ld, src, s->err,
			   "expected a map or a list of maps to merge ('<<'), got %s",
			   describe(src, got, sizeof(got)));
	}
	return ret;
}

/*
 * Appends the pairs of @map that @out does not hold yet: first its own keys (a key given
 * twice counts once, with its later value), then what its merge keys bring in.
 */
static int map_pairs_at(struct loader *ld, yaml_node_t *map, const struct sect *s, int depth,
			struct kvlist *out)
{
	yaml_node_pair_t *start = map->data.mapping.pairs.start, *top = map->data.mapping.pairs.top;
	char path[KEY_MAX];
	int ret = 0;

	if (depth > MAX_MERGE_DEPTH) {
		ret = fail(ld, map, s->err, "merge keys ('<<') nest more than %d deep",
			   MAX_MERGE_DEPTH);
		goto out;
	}
	for (yaml_node_pair_t *p = start; p < top; p++) {
		yaml_node_t *k = doc_node(ld, p->key), *later = NULL;

		ret = check_key(ld, k, s);
		if (ret < 0)
			goto out;
		if (is_merge_key(k))
			continue;
		for (yaml_node_pair_t *q = p + 1; q < top && !later; q++) {
			yaml_node_t *k2 = doc_node(ld, q->key);

			if (k2 && k2->type == YAML_SCALAR_NODE && !is_merge_key(k2) &&
			    strcmp(scalar_str(k2), scalar_str(k)) == 0)
				later = k2;
		}
		if (later) {
			keypath(path, sizeof(path), s->warn, scalar_str(k));
			ret = first_time(ld, "twice", path);
			if (ret < 0)
				goto out;
			if (ret > 0)
				log_msg(LOG_WARNING,
					"config %s:%zu: key '%s' is given again on line %zu; "
					"using the later value",
					ld->file, node_line(k), path, node_line(later));
			ret = 0;
			continue;
		}
		if (kv_find(out, scalar_str(k)))
			continue;
		ret = kv_push(out, k, doc_node(ld, p->value));
		if (ret < 0)
			goto out;
	}
	for (yaml_node_pair_t *p = start; p < top; p++) {
		if (!is_merge_key(doc_node(ld, p->key)))
			continue;
		ret = merge_into(ld, doc_node(ld, p->value), s, depth, out);
		if (ret < 0)
			goto out;
	}
out:
	return ret;
}

/*
 * The pairs of map @node in *out (free with kvlist_free). A null value is an empty map;
 * anything else that is not a map is an error saying @what was expected.
 */
static int map_pairs(struct loader *ld, yaml_node_t *node, const struct sect *s, const char *what,
		     struct kvlist *out)
{
	char got[96];
	int ret = 0;

	memset(out, 0, sizeof(*out));
	if (is_null(node))
		goto out;
	if (node->type != YAML_MAPPING_NODE) {
		ret = fail(ld, node, s->err, "expected %s, got %s", what,
			   describe(node, got, sizeof(got)));
		goto out;
	}
	ret = map_pairs_at(ld, node, s, 0, out);
	if (ret < 0)
		kvlist_free(out);
out:
	return ret;
}

/* ---- scalar values ----------------------------------------------------------------------- */

/*
 * Points *out at the text of scalar @node, or at NULL when the value is null (the key counts
 * as not set). Anything but a scalar is an error that says @what was expected.
 */
static int get_scalar(struct loader *ld, const yaml_node_t *node, const char *key,
		      const char *what, const char **out)
{
	char got[96];
	int ret = 0;

	*out = NULL;
	if (is_null(node))
		goto out;
	if (node->type != YAML_SCALAR_NODE)
		ret = fail(ld, node, key, "expected %s, got %s", what,
			   describe(node, got, sizeof(got)));
	else if (strlen(scalar_str(node)) != node->data.scalar.length)
		ret = fail(ld, node, key, "expected %s, got a value with a NUL byte", what);
	else
		*out = scalar_str(node);
out:
	return ret;
}

static int get_int(struct loader *ld, const yaml_node_t *node, const char *key, long min,
		   long max, const char *what, int *out)
{
	const char *s;
	char got[96], *end;
	long long v;
	int ret;

	ret = get_scalar(ld, node, key, what, &s);
	if (ret < 0 || !s)
		goto out;
	errno = 0;
	if (!isdigit((unsigned char)s[0]) &&
	    !((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1])))
		goto bad;
	v = strtoll(s, &end, 10);
	if (*end || errno == ERANGE || v < min || v > max)
		goto bad;
	*out = (int)v;
	goto out;
bad:
	ret = fail(ld, node, key, "expected %s, got %s", what, describe(node, got, sizeof(got)));
out:
	return ret;
}

/* A plain decimal number >= 0 ("2", "0.5", "1e3"); no hex, inf or nan. Returns 0 or -EINVAL. */
static int parse_number(const char *s, double *out)
{
	char *end;
	double v;
	int ret = -EINVAL;

	if (!isdigit((unsigned char)s[0]) && s[0] != '.' && s[0] != '+')
		goto out;
	for (const char *p = s; *p; p++)
		if (!isdigit((unsigned char)*p) && !strchr(".eE+-", *p))
			goto out;
	errno = 0;
	v = strtod(s, &end);
	if (end == s || *end || errno == ERANGE || !isfinite(v) || v < 0)
		goto out;
	*out = v;
	ret = 0;
out:
	return ret;
}

static int get_number(struct loader *ld, const yaml_node_t *node, const char *key, double *out)
{
	static const char what[] = "a number >= 0";
	const char *s;
	char got[96];
	int ret;

	ret = get_scalar(ld, node, key, what, &s);
	if (ret == 0 && s && parse_number(s, out) < 0)
		ret = fail(ld, node, key, "expected %s, got %s", what,
			   describe(node, got, sizeof(got)));
	return ret;
}

static int get_bool(struct loader *ld, const yaml_node_t *node, const char *key, bool *out)
{
	/* YAML 1.1 booleans, which is what PyYAML reads. */
	static const char *const yes[] = { "true", "yes", "on" };
	static const char *const no[] = { "false", "no", "off" };
	const char *s;
	char got[96];
	int ret;

	ret = get_scalar(ld, node, key, "true or false", &s);
	if (ret < 0 || !s)
		goto out;
	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			goto out;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			goto out;
		}
	}
	ret = fail(ld, node, key, "expected true or false, got %s",
		   describe(node, got, sizeof(got)));
out:
	return ret;
}

/* Replaces *out with a copy of the value; a null or empty value leaves *out alone. */
static int get_string(struct loader *ld, const yaml_node_t *node, const char *key, char **out)
{
	const char *s;
	char *copy;
	int ret;

	ret = get_scalar(ld, node, key, "a string", &s);
	if (ret < 0 || !s || !*s)
		goto out;
	copy = strdup(s);
	if (!copy) {
		ret = -ENOMEM;
		goto out;
	}
	free(*out);
	*out = copy;
out:
	return ret;
}

/* Sets the field @f of the struct at @base from @node. */
static int set_field(struct loader *ld, void *base, const struct field *f, const yaml_node_t *node,
		     const char *key)
{
	char *p = (char *)base + f->off;
	int ret = 0;

	switch (f->type) {
	case F_BOOL:
		ret = get_bool(ld, node, key, (bool *)p);
		break;
	case F_INT_POS:
		ret = get_int(ld, node, key, 1, INT_MAX, "a positive integer", (int *)p);
		break;
	case F_INT_NONNEG:
		ret = get_int(ld, node, key, 0, INT_MAX, "a non-negative integer", (int *)p);
		break;
	case F_PORT:
		ret = get_int(ld, node, key, 1, 65535, "a port number (1-65535)", (int *)p);
		break;
	case F_NUM:
		ret = get_number(ld, node, key, (double *)p);
		break;
	case F_STR:
		ret = get_string(ld, node, key, (char **)p);
		break;
	case F_SPECIAL:
		break;
	}
	return ret;
}

static const struct field *find_field(const struct field *fields, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(fields[i].name, name) == 0)
			return &fields[i];
	return NULL;
}

/* ---- paths ------------------------------------------------------------------------------- */

/* Lexically normalises absolute @path in place: no "//", "." or ".." left, no trailing '/'. */
static void path_normalize(char *path)
{
	size_t i = 1, o = 1;

	while (path[i]) {
		size_t len;

		while (path[i] == '/')
			i++;
		for (len = 0; path[i + len] && path[i + len] != '/'; len++)
			;
		if (len == 0 || (len == 1 && path[i] == '.')) {
			/* nothing to keep */
		} else if (len == 2 && path[i] == '.' && path[i + 1] == '.') {
			while (o > 1 && path[o - 1] != '/')
				o--;
			if (o > 1)
				o--;
		} else {
			if (o > 1)
				path[o++] = '/';
			memmove(path + o, path + i, len);
			o += len;
		}
		i += len;
	}
	path[o] = '\0';
}

static int home_dir(char *buf, size_t len)
{
	const char *home = getenv("HOME");
	struct passwd pw, *res = NULL;
	char pwbuf[4096];
	int ret = 0;

	if (!home || home[0] != '/') {
		if (getpwuid_r(getuid(), &pw, pwbuf, sizeof(pwbuf), &res) != 0 || !res ||
		    !res->pw_dir || res->pw_dir[0] != '/') {
			ret = -ENOENT;
			goto out;
		}
		home = res->pw_dir;
	}
	if ((size_t)snprintf(buf, len, "%s", home) >= len)
		ret = -ENAMETOOLONG;
out:
	return ret;
}

/*
 * Makes @value, a path from the config, absolute in a new string *out: "~" and "~/..." under
 * $HOME when @expand_home (else kept as written, for a remote host), relative paths under
 * the config file's directory; the result is normalised.
 */
static int resolve_path(struct loader *ld, const yaml_node_t *node, const char *key,
			const char *value, bool expand_home, char **out)
{
	char home[PATH_MAX];
	char *path = NULL;
	int ret = 0;

	*out = NULL;
	if (value[0] == '~') {
		if (!expand_home) {
			path = strdup(value);
			if (!path)
				ret = -ENOMEM;
			goto out;
		}
		if (value[1] && value[1] != '/') {
			ret = fail(ld, node, key,
				   "expected a path ('~user' paths are not supported), got '%s'",
				   value);
			goto out;
		}
		if (home_dir(home, sizeof(home)) < 0) {
			ret = fail(ld, node, key, "cannot expand '~': $HOME is not set");
			goto out;
		}
		path = path_join(home, value[1] ? value + 2 : "");
	} else if (value[0] == '/') {
		path = strdup(value);
	} else {
		path = path_join(ld->base_dir, value);
	}
	if (!path) {
		ret = -ENOMEM;
		goto out;
	}
	path_normalize(path);
out:
	if (ret == 0)
		*out = path;
	else
		free(path);
	return ret;
}

/* get_string() + resolve_path(). */
static int get_path(struct loader *ld, const yaml_node_t *node, const char *key, bool expand_home,
		    char **out)
{
	const char *s;
	char *path = NULL;
	int ret;

	ret = get_scalar(ld, node, key, "a path", &s);
	if (ret < 0 || !s || !*s)
		goto out;
	ret = resolve_path(ld, node, key, s, expand_home, &path);
	if (ret < 0)
		goto out;
	free(*out);
	*out = path;
out:
	return ret;
}

/* A name usable as one path component: not empty, no '/', ',' or control bytes, no leading '.'. */
static bool is_simple_name(const char *s)
{
	if (!*s || *s == '.')
		return false;
	for (; *s; s++)
		if (*s == '/' || *s == ',' || (unsigned char)*s <= 0x20 || *s == 0x7f)
			return false;
	return true;
}

/* ---- sections ---------------------------------------------------------------------------- */

static int load_categories(struct loader *ld, yaml_node_t *node)
{
	static const struct sect s = { "categories", "categories" };
	struct mfs_config *cfg = ld->cfg;
	struct kvlist l;
	char key[KEY_MAX];
	int ret;

	ret = map_pairs(ld, node, &s, "a map of category names to paths", &l);
	if (ret < 0 || is_null(node))
		goto out;
	if (l.n == 0) {
		ret = fail(ld, node, s.err, "expected at least one category");
		goto out;
	}
	for (size_t i = 0; i < cfg->n_categories; i++) {
		free(cfg->categories[i].name);
		free(cfg->categories[i].path);
	}
	memset(cfg->categories, 0, sizeof(cfg->categories));
	cfg->n_categories = 0;
	for (size_t i = 0; i < l.n; i++) {
		struct cfg_category *c = &cfg->categories[cfg->n_categories];
		const char *path;
		char *copy = NULL;

		keypath(key, sizeof(key), s.err, l.v[i].key);
		if (cfg->n_categories == CFG_MAX_CATEGORIES) {
			ret = fail(ld, l.v[i].key_node, key, "at most %d categories are supported",
				   CFG_MAX_CATEGORIES);
			goto out;
		}
		if (!is_simple_name(l.v[i].key)) {
			ret = fail(ld, l.v[i].key_node, key,
				   "expected a simple name (no '/', ',' or spaces, not starting "
				   "with '.') as category name");
			goto out;
		}
		ret = get_scalar(ld, l.v[i].val, key, "a path relative to each host's root",
				 &path);
		if (ret < 0)
			goto out;
		if (path) {
			copy = strdup(path);
			if (!copy) {
				ret = -ENOMEM;
				goto out;
			}
			/* "data/games/" means data/games. */
			for (size_t n = strlen(copy); n > 1 && copy[n - 1] == '/'; n--)
				copy[n - 1] = '\0';
		}
		if (!copy || !path_is_clean_relative(copy)) {
			char got[96];

			free(copy);
			ret = fail(ld, l.v[i].val, key,
				   "expected a path relative to each host's root (no '..', not "
				   "absolute), got %s",
				   describe(l.v[i].val, got, sizeof(got)));
			goto out;
		}
		c->name = strdup(l.v[i].key);
		c->path = copy;
		cfg->n_categories++;
		if (!c->name) {
			ret = -ENOMEM;
			goto out;
		}
	}
out:
	kvlist_free(&l);
	return ret;
}

/* min_free: a size ("20G") or a percentage of the cache's file system ("10%"). */
static int get_min_free(struct loader *ld, const yaml_node_t *node, const char *key)
{
	static const char what[] = "a size like 20G or a percentage like 10%";
	struct mfs_config *cfg = ld->cfg;
	const char *s;
	char got[96], num[64];
	size_t len;
	double pct;
	int ret;

	ret = get_scalar(ld, node, key, what, &s);
	if (ret < 0 || !s)
		goto out;
	len = strlen(s);
	if (len > 1 && s[len - 1] == '%' && len < sizeof(num)) {
		memcpy(num, s, len - 1);
		num[len - 1] = '\0';
		if (parse_number(num, &pct) < 0 || pct > 100)
			goto bad;
		cfg->cache_min_free_pct = pct;
		cfg->cache_min_free_bytes = 0;
		goto out;
	}
	if (config_parse_size(s, &cfg->cache_min_free_bytes) < 0)
		goto bad;
	cfg->cache_min_free_pct = 0;
	goto out;
bad:
	ret = fail(ld, node, key, "expected %s, got %s", what, describe(node, got, sizeof(got)));
out:
	return ret;
}

static int load_cache(struct loader *ld, yaml_node_t *node)
{
	static const struct sect s = { "cache", "cache" };
	struct kvlist l;
	char key[KEY_MAX], got[96];
	const char *v;
	int ret;

	ret = map_pairs(ld, node, &s, "a map (max_size, min_free)", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		const struct kv *kv = &l.v[i];

		keypath(key, sizeof(key), s.err, kv->key);
		if (strcmp(kv->key, "max_size") == 0) {
			ret = get_scalar(ld, kv->val, key, "a size like 200G", &v);
			if (ret == 0 && v && config_parse_size(v, &ld->cfg->cache_max_size) < 0)
				ret = fail(ld, kv->val, key, "expected a size like 200G, got %s",
					   describe(kv->val, got, sizeof(got)));
		} else if (strcmp(kv->key, "min_free") == 0) {
			ret = get_min_free(ld, kv->val, key);
		} else {
			ret = warn_unknown(ld, kv, s.warn);
		}
	}
	kvlist_free(&l);
	return ret;
}

static int load_strategy(struct loader *ld, const yaml_node_t *node, const char *key)
{
	const char *s;
	char got[96];
	int ret;

	ret = get_scalar(ld, node, key, "auto, hybrid, ephemeral or broadcast", &s);
	if (ret < 0 || !s)
		goto out;
	for (size_t i = 0; i < ARRAY_SIZE(strategy_names); i++) {
		if (strcmp(s, strategy_names[i]) == 0) {
			ld->cfg->auto_sync.strategy = (enum cfg_strategy)i;
			goto out;
		}
	}
	ret = fail(ld, node, key, "expected auto, hybrid, ephemeral or broadcast, got %s",
		   describe(node, got, sizeof(got)));
out:
	return ret;
}

static int load_bw_overrides(struct loader *ld, yaml_node_t *node, const char *key)
{
	const struct sect s = { key, key };
	struct mfs_config *cfg = ld->cfg;
	struct kvlist l;
	char sub[KEY_MAX];
	int ret;

	ret = map_pairs(ld, node, &s, "a map of host name patterns to megabits per second", &l);
	if (ret < 0 || l.n == 0)
		goto out;
	cfg->auto_sync.host_bandwidth_overrides = calloc(l.n, sizeof(struct cfg_bw_override));
	if (!cfg->auto_sync.host_bandwidth_overrides) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < l.n; i++) {
		size_t n = cfg->auto_sync.n_host_bandwidth_overrides;
		struct cfg_bw_override *o = &cfg->auto_sync.host_bandwidth_overrides[n];

		keypath(sub, sizeof(sub), key, l.v[i].key);
		if (is_null(l.v[i].val))
			continue;
		ret = get_number(ld, l.v[i].val, sub, &o->mbps);
		if (ret < 0)
			goto out;
		o->pattern = strdup(l.v[i].key);
		if (!o->pattern) {
			ret = -ENOMEM;
			goto out;
		}
		cfg->auto_sync.n_host_bandwidth_overrides++;
	}
out:
	kvlist_free(&l);
	return ret;
}

static int load_auto_sync(struct loader *ld, yaml_node_t *node)
{
#define AS(m) offsetof(struct mfs_config, auto_sync.m)
	static const struct field fields[] = {
		{ "enabled", F_BOOL, AS(enabled) },
		{ "strategy", F_SPECIAL, 0 },
		{ "interval_seconds", F_INT_POS, AS(interval_seconds) },
		{ "bandwidth_limit_mbps", F_NUM, AS(bandwidth_limit_mbps) },
		{ "host_bandwidth_overrides", F_SPECIAL, 0 },
		{ "read_deadline_seconds", F_INT_POS, AS(read_deadline_seconds) },
		{ "circuit_failure_threshold", F_INT_POS, AS(circuit_failure_threshold) },
		{ "circuit_recovery_seconds", F_INT_POS, AS(circuit_recovery_seconds) },
		{ "shutdown_flush_seconds", F_INT_NONNEG, AS(shutdown_flush_seconds) },
	};
#undef AS
	static const struct sect s = { "auto_sync", "auto_sync" };
	struct kvlist l;
	char key[KEY_MAX];
	int ret;

	ret = map_pairs(ld, node, &s, "a map", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		const struct field *f = find_field(fields, ARRAY_SIZE(fields), l.v[i].key);

		keypath(key, sizeof(key), s.err, l.v[i].key);
		if (!f)
			ret = warn_unknown(ld, &l.v[i], s.warn);
		else if (strcmp(f->name, "strategy") == 0)
			ret = load_strategy(ld, l.v[i].val, key);
		else if (strcmp(f->name, "host_bandwidth_overrides") == 0)
			ret = load_bw_overrides(ld, l.v[i].val, key);
		else
			ret = set_field(ld, ld->cfg, f, l.v[i].val, key);
	}
	kvlist_free(&l);
	return ret;
}

/* One excluded_hosts entry: a host name, or a map whose `name` is the host name. */
static int load_excluded_host(struct loader *ld, yaml_node_t *item, const char *key, char **out)
{
	static const struct sect s = { "sync_routing.excluded_hosts[]",
				       "sync_routing.excluded_hosts[]" };
	static const char what[] = "a host name or a map with 'name'";
	struct kvlist l = { 0 };
	const yaml_node_t *name_node = NULL;
	const char *name = NULL;
	char got[96];
	int ret = 0;

	if (item && item->type == YAML_MAPPING_NODE) {
		ret = map_pairs(ld, item, &s, what, &l);
		for (size_t i = 0; ret == 0 && i < l.n; i++) {
			if (strcmp(l.v[i].key, "name") == 0)
				name_node = l.v[i].val;
			else
				ret = warn_unknown(ld, &l.v[i], s.warn);
		}
		if (ret < 0)
			goto out;
		if (!name_node) {
			ret = fail(ld, item, key, "expected %s, got a map without 'name'", what);
			goto out;
		}
	} else {
		name_node = item;
	}
	ret = get_scalar(ld, name_node, key, what, &name);
	if (ret < 0)
		goto out;
	if (!name || !*name) {
		ret = fail(ld, name_node, key, "expected %s, got %s", what,
			   describe(name_node, got, sizeof(got)));
		goto out;
	}
	*out = strdup(name);
	if (!*out)
		ret = -ENOMEM;
out:
	kvlist_free(&l);
	return ret;
}

static int load_excluded_hosts(struct loader *ld, yaml_node_t *node, const char *key)
{
	struct mfs_config *cfg = ld->cfg;
	size_t n;
	char got[96];
	int ret = 0;

	if (is_null(node))
		goto out;
	if (node->type != YAML_SEQUENCE_NODE) {
		ret = fail(ld, node, key, "expected a list of host names, got %s",
			   describe(node, got, sizeof(got)));
		goto out;
	}
	n = node->data.sequence.items.top - node->data.sequence.items.start;
	if (n == 0)
		goto out;
	cfg->sync_routing.excluded_hosts = calloc(n, sizeof(char *));
	if (!cfg->sync_routing.excluded_hosts) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *item = doc_node(ld, node->data.sequence.items.start[i]);

		ret = load_excluded_host(ld, item, key,
					 &cfg->sync_routing.excluded_hosts[i]);
		if (ret < 0)
			goto out;
		cfg->sync_routing.n_excluded_hosts++;
	}
out:
	return ret;
}

static int load_sync_routing(struct loader *ld, yaml_node_t *node)
{
	static const struct sect s = { "sync_routing", "sync_routing" };
	static const struct field f = {
		"replication_target", F_INT_NONNEG,
		offsetof(struct mfs_config, sync_routing.replication_target)
	};
	struct kvlist l;
	char key[KEY_MAX];
	int ret;

	ret = map_pairs(ld, node, &s, "a map", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		keypath(key, sizeof(key), s.err, l.v[i].key);
		if (strcmp(l.v[i].key, "excluded_hosts") == 0)
			ret = load_excluded_hosts(ld, l.v[i].val, key);
		else if (strcmp(l.v[i].key, f.name) == 0)
			ret = set_field(ld, ld->cfg, &f, l.v[i].val, key);
		else
			ret = warn_unknown(ld, &l.v[i], s.warn);
	}
	kvlist_free(&l);
	return ret;
}

/* ---- hosts ------------------------------------------------------------------------------- */

static int load_storage_paths(struct loader *ld, struct cfg_host *h, yaml_node_t *node,
			      const struct sect *hs, bool self)
{
	char err_prefix[KEY_MAX], warn_prefix[KEY_MAX], key[KEY_MAX];
	struct mfs_config *cfg = ld->cfg;
	const struct sect s = { keypath(err_prefix, sizeof(err_prefix), hs->err, "storage_paths"),
				keypath(warn_prefix, sizeof(warn_prefix), hs->warn,
					"storage_paths") };
	int training = config_category_index(cfg, "training");
	const struct kv *alias = NULL;
	struct kvlist l;
	int ret;

	ret = map_pairs(ld, node, &s, "a map of category names to paths", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		int idx = config_category_index(cfg, l.v[i].key);

		keypath(key, sizeof(key), s.err, l.v[i].key);
		if (idx >= 0)
			ret = get_path(ld, l.v[i].val, key, self, &h->storage_paths[idx]);
		else if (training >= 0 && strcmp(l.v[i].key, "training_data") == 0)
			alias = &l.v[i];
		else
			ret = warn_unknown(ld, &l.v[i], s.warn);
	}
	/* The cluster's own name for the training category; `training` itself wins. */
	if (ret == 0 && alias && !h->storage_paths[training])
		ret = get_path(ld, alias->val,
			       keypath(key, sizeof(key), s.err, alias->key), self,
			       &h->storage_paths[training]);
	kvlist_free(&l);
	return ret;
}

static int load_shared_storage(struct loader *ld, struct cfg_host *h, yaml_node_t *node,
			       const char *key, bool self)
{
	size_t n;
	char got[96];
	int ret = 0;

	if (is_null(node))
		goto out;
	if (node->type != YAML_SEQUENCE_NODE) {
		ret = fail(ld, node, key, "expected a list of paths, got %s",
			   describe(node, got, sizeof(got)));
		goto out;
	}
	n = node->data.sequence.items.top - node->data.sequence.items.start;
	if (n == 0)
		goto out;
	h->shared_storage = calloc(n, sizeof(char *));
	if (!h->shared_storage) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *item = doc_node(ld, node->data.sequence.items.start[i]);
		char *path = NULL;

		ret = get_path(ld, item, key, self, &path);
		if (ret < 0)
			goto out;
		if (path)
			h->shared_storage[h->n_shared_storage++] = path;
	}
out:
	return ret;
}

static int load_transports(struct loader *ld, struct cfg_host *h, yaml_node_t *node,
			   const char *key)
{
	static const char what[] = "a list of http, ssh, aria2";
	unsigned bits = 0;
	size_t n = 0;
	char got[96];
	int ret = 0;

	if (is_null(node))
		goto out;
	if (node->type != YAML_SEQUENCE_NODE ||
	    node->data.sequence.items.top == node->data.sequence.items.start) {
		ret = fail(ld, node, key, "expected %s, got %s", what,
			   node->type == YAML_SEQUENCE_NODE ? "an empty list"
							    : describe(node, got, sizeof(got)));
		goto out;
	}
	memset(h->transport_order, 0, sizeof(h->transport_order));
	for (yaml_node_item_t *it = node->data.sequence.items.start;
	     it < node->data.sequence.items.top; it++) {
		yaml_node_t *item = doc_node(ld, *it);
		unsigned bit = 0;
		const char *s;

		ret = get_scalar(ld, item, key, what, &s);
		if (ret < 0)
			goto out;
		for (size_t i = 0; s && i < ARRAY_SIZE(transport_names); i++)
			if (strcmp(s, transport_names[i].name) == 0)
				bit = transport_names[i].bit;
		if (!bit) {
			ret = fail(ld, item, key, "expected http, ssh or aria2, got %s",
				   describe(item, got, sizeof(got)));
			goto out;
		}
		if (bits & bit)
			continue;
		bits |= bit;
		h->transport_order[n++] = (uint8_t)bit;
	}
	h->transports = bits;
out:
	return ret;
}

static int load_host(struct loader *ld, const struct kv *entry, struct cfg_host *h)
{
#define H(m) offsetof(struct cfg_host, m)
	static const struct field fields[] = {
		{ "address", F_SPECIAL, 0 },
		{ "tailscale_ip", F_SPECIAL, 0 },
		{ "ssh_host", F_SPECIAL, 0 },
		{ "data_server_port", F_PORT, H(data_server_port) },
		{ "root", F_SPECIAL, 0 },
		{ "ringrift_path", F_SPECIAL, 0 },
		{ "storage_paths", F_SPECIAL, 0 },
		{ "shared_storage", F_SPECIAL, 0 },
		{ "role", F_STR, H(role) },
		{ "status", F_STR, H(status) },
		{ "is_ephemeral", F_BOOL, H(is_ephemeral) },
		{ "ssh_user", F_STR, H(ssh_user) },
		{ "ssh_port", F_PORT, H(ssh_port) },
		{ "ssh_key", F_SPECIAL, 0 },
		{ "bandwidth_mbps", F_NUM, H(bandwidth_mbps) },
		{ "transports", F_SPECIAL, 0 },
	};
#undef H
	/* The compatible spellings, most preferred first. */
	static const char *const addr_keys[] = { "address", "tailscale_ip", "ssh_host" };
	static const char *const root_keys[] = { "root", "ringrift_path" };
	const yaml_node_t *addr_nodes[ARRAY_SIZE(addr_keys)] = { 0 };
	const yaml_node_t *root_nodes[ARRAY_SIZE(root_keys)] = { 0 };
	char err_prefix[KEY_MAX], key[KEY_MAX];
	const struct sect s = { keypath(err_prefix, sizeof(err_prefix), "hosts", h->name),
				"hosts.*" };
	bool self = strcmp(h->name, ld->cfg->node) == 0;
	struct kvlist l = { 0 };
	int ret = 0;

	ret = map_pairs(ld, entry->val, &s, "a map of host settings", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		const struct kv *kv = &l.v[i];
		const struct field *f = find_field(fields, ARRAY_SIZE(fields), kv->key);

		keypath(key, sizeof(key), s.err, kv->key);
		if (!f) {
			ret = warn_unknown(ld, kv, s.warn);
		} else if (f->type != F_SPECIAL) {
			ret = set_field(ld, h, f, kv->val, key);
		} else if (strcmp(f->name, "storage_paths") == 0) {
			ret = load_storage_paths(ld, h, kv->val, &s, self);
		} else if (strcmp(f->name, "shared_storage") == 0) {
			ret = load_shared_storage(ld, h, kv->val, key, self);
		} else if (strcmp(f->name, "transports") == 0) {
			ret = load_transports(ld, h, kv->val, key);
		} else if (strcmp(f->name, "ssh_key") == 0) {
			ret = get_path(ld, kv->val, key, true, &h->ssh_key);
		} else {
			for (size_t j = 0; j < ARRAY_SIZE(addr_keys); j++)
				if (strcmp(kv->key, addr_keys[j]) == 0)
					addr_nodes[j] = kv->val;
			for (size_t j = 0; j < ARRAY_SIZE(root_keys); j++)
				if (strcmp(kv->key, root_keys[j]) == 0)
					root_nodes[j] = kv->val;
		}
	}
	if (ret < 0)
		goto out;
	for (size_t j = 0; j < ARRAY_SIZE(addr_keys) && !h->address; j++) {
		ret = get_string(ld, addr_nodes[j], keypath(key, sizeof(key), s.err, addr_keys[j]),
				 &h->address);
		if (ret < 0)
			goto out;
		if (h->address && self) {
			ld->self_addr_key = addr_keys[j];
			ld->self_addr_node = addr_nodes[j];
		}
	}
	for (size_t j = 0; j < ARRAY_SIZE(root_keys) && !h->root; j++) {
		ret = get_path(ld, root_nodes[j], keypath(key, sizeof(key), s.err, root_keys[j]),
			       self, &h->root);
		if (ret < 0)
			goto out;
	}
	h->active = true;
	for (size_t j = 0; j < ARRAY_SIZE(inactive_status); j++)
		if (strcasecmp(h->status, inactive_status[j]) == 0)
			h->active = false;
out:
	kvlist_free(&l);
	return ret;
}

static int init_host(struct cfg_host *h, const struct kv *entry)
{
	static const uint8_t order[] = { CFG_XPORT_HTTP, CFG_XPORT_SSH, CFG_XPORT_ARIA2 };
	int ret = 0;

	h->name = strdup(entry->key);
	h->status = strdup("ready");
	if (!h->name || !h->status)
		ret = -ENOMEM;
	h->line = (int)node_line(entry->key_node);
	h->data_server_port = CFG_DEFAULT_PORT;
	h->ssh_port = 22;
	h->active = true;
	h->transports = CFG_XPORT_ALL;
	memcpy(h->transport_order, order, sizeof(order));
	return ret;
}

/* "a, b, c, ... (12 in all)": the host names for an error message, shortened if many. */
static void host_list(const struct kvlist *hosts, char *buf, size_t len)
{
	size_t o = 0, i;

	buf[0] = '\0';
	for (i = 0; i < hosts->n; i++) {
		size_t need = strlen(hosts->v[i].key) + 2;

		if (o + need > HOST_LIST_MAX || o + need >= len)
			break;
		o += snprintf(buf + o, len - o, "%s%s", i ? ", " : "", hosts->v[i].key);
	}
	if (i < hosts->n)
		snprintf(buf + o, len - o, "%s... (%zu in all)", i ? ", " : "", hosts->n);
}

/*
 * Sets cfg->node: the `node` key, else $MESHFS_NODE, else NODE_ID_FILE, else the host name
 * (or, when only its short form is a host, the part before the first '.').
 */
static int resolve_node(struct loader *ld, const yaml_node_t *node_val, const struct kvlist *hosts)
{
	struct mfs_config *cfg = ld->cfg;
	char hostname[HOST_NAME_MAX + 1], *file = NULL, *dot;
	const char *name = NULL, *env;
	int ret;

	ret = get_scalar(ld, node_val, "node", "a host name", &name);
	if (ret < 0)
		goto out;
	if (name && *name) {
		ld->node_source = "key 'node'";
		ld->node_from_key = true;
		goto found;
	}
	env = getenv("MESHFS_NODE");
	if (env && *env) {
		name = env;
		ld->node_source = "$MESHFS_NODE";
		goto found;
	}
	ret = read_small_file(NODE_ID_FILE, &file);
	if (ret == 0 && *str_strip(file)) {
		name = file;
		ld->node_source = NODE_ID_FILE;
		goto found;
	}
	if (ret < 0 && ret != -ENOENT)
		log_msg(LOG_WARNING, "config: cannot read %s: %s; using the host name",
			NODE_ID_FILE, strerror(-ret));
	ret = 0;
	if (gethostname(hostname, sizeof(hostname)) < 0 || !hostname[0]) {
		ret = fail(ld, NULL, NULL,
			   "cannot tell which host this node is: set 'node', $MESHFS_NODE or %s",
			   NODE_ID_FILE);
		goto out;
	}
	hostname[sizeof(hostname) - 1] = '\0';
	dot = strchr(hostname, '.');
	if (dot && !kv_find(hosts, hostname)) {
		*dot = '\0';
		if (!kv_find(hosts, hostname))
			*dot = '.';
	}
	name = hostname;
	ld->node_source = "the host name";
found:
	cfg->node = strdup(name);
	if (!cfg->node)
		ret = -ENOMEM;
out:
	free(file);
	return ret;
}

/* @key is the `hosts` key itself, which an error about the whole map points at. */
static int load_hosts(struct loader *ld, const yaml_node_t *key, yaml_node_t *node,
		      const yaml_node_t *node_val)
{
	static const struct sect s = { "hosts", "hosts" };
	struct mfs_config *cfg = ld->cfg;
	char known[HOST_LIST_MAX + 64], got[96];
	struct kvlist l = { 0 };
	int ret = 0;

	if (!node) {
		ret = fail(ld, NULL, NULL,
			   "missing required key 'hosts' (the map of cluster hosts)");
		goto out;
	}
	if (is_null(node) || node->type != YAML_MAPPING_NODE) {
		ret = fail(ld, node, s.err, "expected a map of host names to host settings, got %s",
			   describe(node, got, sizeof(got)));
		goto out;
	}
	ret = map_pairs(ld, node, &s, "a map of hosts", &l);
	if (ret < 0)
		goto out;
	if (l.n == 0) {
		ret = fail(ld, node, s.err, "expected at least one host");
		goto out;
	}
	ret = resolve_node(ld, node_val, &l);
	if (ret < 0)
		goto out;
	cfg->hosts = calloc(l.n, sizeof(*cfg->hosts));
	if (!cfg->hosts) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < l.n; i++) {
		struct cfg_host *h = &cfg->hosts[cfg->n_hosts++];

		if (!is_simple_name(l.v[i].key)) {
			ret = fail(ld, l.v[i].key_node, s.err,
				   "expected a host name (no '/', ',' or spaces, not starting "
				   "with '.'), got '%s'",
				   l.v[i].key);
			goto out;
		}
		ret = init_host(h, &l.v[i]);
		if (ret < 0)
			goto out;
		ret = load_host(ld, &l.v[i], h);
		if (ret < 0)
			goto out;
		if (strcmp(h->name, cfg->node) == 0)
			cfg->self = h;
	}
	if (!cfg->self) {
		host_list(&l, known, sizeof(known));
		if (ld->node_from_key)
			ret = fail(ld, node_val, "node", "expected one of the hosts (%s), got '%s'",
				   known, cfg->node);
		else
			ret = fail(ld, key, s.err,
				   "this node is '%s' (from %s), which is not one of the hosts "
				   "(%s); set 'node' or $MESHFS_NODE",
				   cfg->node, ld->node_source, known);
	}
out:
	kvlist_free(&l);
	return ret;
}

/* ---- listen and token -------------------------------------------------------------------- */

static bool is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
		       (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	return false;
}

/*
 * listen: "HOST:PORT", "[V6]:PORT", "HOST" or a bare IPv6 address (port from the node's own
 * entry), ":PORT" (host from the node's own entry).
 */
static int load_listen(struct loader *ld, const yaml_node_t *node)
{
	static const char what[] = "HOST:PORT with a port in 1-65535";
	struct mfs_config *cfg = ld->cfg;
	const char *s, *port = NULL;
	char *host = NULL, got[96];
	size_t hlen;
	int ret;

	ret = get_scalar(ld, node, "listen", what, &s);
	if (ret < 0 || !s)
		goto out;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (!close || (close[1] && close[1] != ':'))
			goto bad;
		host = strndup(s + 1, close - s - 1);
		port = close[1] ? close + 2 : NULL;
	} else if (strchr(s, ':') && strchr(s, ':') == strrchr(s, ':')) {
		hlen = strchr(s, ':') - s;
		host = strndup(s, hlen);
		port = s + hlen + 1;
	} else {
		host = strdup(s);
	}
	if (!host) {
		ret = -ENOMEM;
		goto out;
	}
	if (port) {
		char *end;
		long v;

		errno = 0;
		v = isdigit((unsigned char)*port) ? strtol(port, &end, 10) : 0;
		if (!isdigit((unsigned char)*port) || *end || errno || v < 1 || v > 65535)
			goto bad;
		cfg->listen_port = (int)v;
	}
	/* A bare number is a port someone forgot the host for, not a host name. */
	if (!port && (!*host || strspn(host, "0123456789") == strlen(host)))
		goto bad;
	if (*host) {
		free(cfg->listen_host);
		cfg->listen_host = host;
		host = NULL;
	}
	goto out;
bad:
	ret = fail(ld, node, "listen", "expected %s, got %s", what,
		   describe(node, got, sizeof(got)));
out:
	free(host);
	return ret;
}

static int load_token(struct loader *ld, const yaml_node_t *node)
{
	static const char key[] = "cluster_token_file";
	struct mfs_config *cfg = ld->cfg;
	char *tok = NULL;
	int ret;

	ret = get_path(ld, node, key, true, &cfg->token_file);
	if (ret < 0 || !cfg->token_file)
		goto out;
	ret = read_small_file(cfg->token_file, &tok);
	if (ret < 0) {
		/* Keep the read's errno (-ENOENT, -EACCES): it is a file problem. */
		int err = ret;

		fail(ld, node, key, "cannot read '%s': %s", cfg->token_file, strerror(-err));
		ret = err;
		goto out;
	}
	str_strip(tok);
	if (!*tok) {
		ret = fail(ld, node, key, "'%s' is empty (expected the cluster token)",
			   cfg->token_file);
		goto out;
	}
	/* The token goes into an HTTP header: one word, nothing that could end the line. */
	for (const char *p = tok; *p; p++) {
		if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
			ret = fail(ld, node, key,
				   "'%s' holds more than one word or line (expected the cluster "
				   "token)",
				   cfg->token_file);
			goto out;
		}
	}
	cfg->token = tok;
	tok = NULL;
out:
	free(tok);
	return ret;
}

/* ---- the file ---------------------------------------------------------------------------- */

static int read_config_file(const char *path, unsigned char **out, size_t *outlen)
{
	unsigned char *buf = NULL, *grown;
	size_t len = 0, cap = 0;
	struct stat st;
	int fd, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		ret = -EISDIR;
		goto out;
	}
	for (;;) {
		ssize_t n;

		if (len == cap) {
			if (cap >= MAX_CONFIG_BYTES) {
				ret = -EFBIG;
				goto out;
			}
			cap = cap ? cap * 2 : 16384;
			grown = realloc(buf, cap);
			if (!grown) {
				ret = -ENOMEM;
				goto out;
			}
			buf = grown;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			goto out;
		}
		if (n == 0)
			break;
		len += n;
	}
	*out = buf;
	*outlen = len;
	buf = NULL;
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return ret;
}

static int syntax_error(struct loader *ld, const yaml_parser_t *parser, const unsigned char *buf,
			size_t len)
{
	size_t line = parser->problem_mark.line + 1, col = parser->problem_mark.column + 1;
	const char *problem = parser->problem ? parser->problem : "malformed YAML";
	int ret = -EINVAL;

	if (parser->error == YAML_MEMORY_ERROR) {
		ret = -ENOMEM;
		goto out;
	}
	if (parser->error == YAML_READER_ERROR) {
		/* The reader reports a byte offset, not a mark. */
		line = col = 1;
		for (size_t i = 0; i < parser->problem_offset && i < len; i++, col++) {
			if (buf[i] == '\n') {
				line++;
				col = 0;
			}
		}
	}
	if (ld->err && ld->errlen)
		snprintf(ld->err, ld->errlen, "%s:%zu:%zu: YAML syntax error: %s%s%s%s", ld->file,
			 line, col, problem, parser->context ? " (" : "",
			 parser->context ? parser->context : "", parser->context ? ")" : "");
out:
	return ret;
}

/* Loads the one YAML document of the file into ld->doc. */
static int parse_file(struct loader *ld)
{
	unsigned char *buf = NULL;
	yaml_parser_t parser;
	yaml_document_t extra;
	bool have_parser = false;
	size_t len = 0;
	int ret;

	ret = read_config_file(ld->file, &buf, &len);
	if (ret < 0) {
		if (ld->err && ld->errlen)
			snprintf(ld->err, ld->errlen, "%s: cannot read the config file: %s",
				 ld->file, strerror(-ret));
		goto out;
	}
	if (!yaml_parser_initialize(&parser)) {
		ret = -ENOMEM;
		goto out;
	}
	have_parser = true;
	yaml_parser_set_input_string(&parser, buf, len);
	if (!yaml_parser_load(&parser, &ld->doc)) {
		ret = syntax_error(ld, &parser, buf, len);
		goto out;
	}
	ld->have_doc = true;
	if (!yaml_document_get_root_node(&ld->doc))
		goto out;
	/* A second document would be silently ignored; PyYAML's safe_load refuses it too. */
	if (!yaml_parser_load(&parser, &extra)) {
		ret = syntax_error(ld, &parser, buf, len);
		goto out;
	}
	if (yaml_document_get_root_node(&extra))
		ret = fail(ld, yaml_document_get_root_node(&extra), NULL,
			   "expected one YAML document, found a second one");
	yaml_document_delete(&extra);
out:
	if (have_parser)
		yaml_parser_delete(&parser);
	free(buf);
	return ret;
}

/* The absolute directory that holds @path (not resolving symlinks). */
static int config_base_dir(const char *path, char **out)
{
	char *cwd = NULL, *abs, *slash;
	int ret = 0;

	if (path[0] == '/') {
		abs = strdup(path);
	} else {
		cwd = getcwd(NULL, 0);
		if (!cwd) {
			ret = -errno;
			goto out;
		}
		abs = path_join(cwd, path);
	}
	if (!abs) {
		ret = -ENOMEM;
		goto out;
	}
	path_normalize(abs);
	slash = strrchr(abs, '/');
	if (slash == abs)
		slash[1] = '\0';
	else
		*slash = '\0';
	*out = abs;
out:
	free(cwd);
	return ret;
}

static int init_defaults(struct mfs_config *cfg)
{
	int ret = 0;

	for (size_t i = 0; i < ARRAY_SIZE(default_categories); i++) {
		cfg->categories[i].name = strdup(default_categories[i].name);
		cfg->categories[i].path = strdup(default_categories[i].path);
		cfg->n_categories++;
		if (!cfg->categories[i].name || !cfg->categories[i].path)
			ret = -ENOMEM;
	}
	cfg->auto_sync.enabled = true;
	cfg->auto_sync.strategy = CFG_STRATEGY_AUTO;
	cfg->auto_sync.interval_seconds = 60;
	cfg->auto_sync.read_deadline_seconds = 30;
	cfg->auto_sync.circuit_failure_threshold = 5;
	cfg->auto_sync.circuit_recovery_seconds = 60;
	cfg->auto_sync.shutdown_flush_seconds = 30;
	cfg->snapshot_interval_seconds = 30;
	cfg->publish_quiet_seconds = 2;
	cfg->sync_routing.replication_target = 2;
	return ret;
}

enum {
	T_NODE,
	T_TOKEN,
	T_STATE_DIR,
	T_LISTEN,
	T_CACHE,
	T_CATEGORIES,
	T_AUTO_SYNC,
	T_SNAPSHOT,
	T_QUIET,
	T_ROUTING,
	T_HOSTS,
	T_COUNT,
};

static const char *const top_keys[T_COUNT] = {
	[T_NODE] = "node",
	[T_TOKEN] = "cluster_token_file",
	[T_STATE_DIR] = "state_dir",
	[T_LISTEN] = "listen",
	[T_CACHE] = "cache",
	[T_CATEGORIES] = "categories",
	[T_AUTO_SYNC] = "auto_sync",
	[T_SNAPSHOT] = "snapshot_interval_seconds",
	[T_QUIET] = "publish_quiet_seconds",
	[T_ROUTING] = "sync_routing",
	[T_HOSTS] = "hosts",
};

/* Walks the loaded document into ld->cfg, sections in the order their dependencies need. */
static int load_document(struct loader *ld)
{
	static const struct sect s = { "", "" };
	static const struct field snapshot = { "snapshot_interval_seconds", F_INT_NONNEG,
					       offsetof(struct mfs_config,
							snapshot_interval_seconds) };
	static const struct field quiet = { "publish_quiet_seconds", F_NUM,
					    offsetof(struct mfs_config, publish_quiet_seconds) };
	yaml_node_t *root = yaml_document_get_root_node(&ld->doc), *top[T_COUNT] = { 0 };
	yaml_node_t *top_key[T_COUNT] = { 0 };
	struct mfs_config *cfg = ld->cfg;
	const char *listen_key = "listen";
	const yaml_node_t *listen_node;
	struct kvlist l = { 0 };
	char got[96];
	int ret;

	if (!root || is_null(root)) {
		ret = fail(ld, NULL, NULL,
			   "the file is empty (expected a map with at least the key 'hosts')");
		goto out;
	}
	if (root->type != YAML_MAPPING_NODE) {
		ret = fail(ld, root, NULL, "expected a map at the top level, got %s",
			   describe(root, got, sizeof(got)));
		goto out;
	}
	ret = map_pairs(ld, root, &s, "a map", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		size_t t;

		for (t = 0; t < T_COUNT && strcmp(l.v[i].key, top_keys[t]) != 0; t++)
			;
		if (t < T_COUNT) {
			top[t] = l.v[i].val;
			top_key[t] = l.v[i].key_node;
		} else {
			ret = warn_unknown(ld, &l.v[i], s.warn);
		}
	}
	if (ret < 0)
		goto out;

	ret = load_categories(ld, top[T_CATEGORIES]);
	if (ret == 0)
		ret = load_cache(ld, top[T_CACHE]);
	if (ret == 0)
		ret = load_auto_sync(ld, top[T_AUTO_SYNC]);
	if (ret == 0)
		ret = set_field(ld, cfg, &snapshot, top[T_SNAPSHOT], snapshot.name);
	if (ret == 0)
		ret = set_field(ld, cfg, &quiet, top[T_QUIET], quiet.name);
	if (ret == 0)
		ret = load_sync_routing(ld, top[T_ROUTING]);
	if (ret == 0)
		ret = load_hosts(ld, top_key[T_HOSTS], top[T_HOSTS], top[T_NODE]);
	if (ret < 0)
		goto out;

	ret = get_path(ld, top[T_STATE_DIR], top_keys[T_STATE_DIR], true, &cfg->state_dir);
	if (ret < 0)
		goto out;
	if (!cfg->state_dir && asprintf(&cfg->state_dir, "%s/%s", DEFAULT_STATE_ROOT,
					cfg->node) < 0) {
		cfg->state_dir = NULL;
		ret = -ENOMEM;
		goto out;
	}
	cfg->listen_host = strdup(cfg->self->address ? cfg->self->address : "127.0.0.1");
	cfg->listen_port = cfg->self->data_server_port;
	if (!cfg->listen_host) {
		ret = -ENOMEM;
		goto out;
	}
	ret = load_listen(ld, top[T_LISTEN]);
	if (ret < 0)
		goto out;
	ret = load_token(ld, top[T_TOKEN]);
	if (ret < 0)
		goto out;
	if (!cfg->token && !is_loopback(cfg->listen_host)) {
		bool v6 = strchr(cfg->listen_host, ':') != NULL;
		char key[KEY_MAX];

		/* Name the key that chose the address, so the reader knows what to change. */
		listen_node = top[T_LISTEN];
		if (is_null(listen_node) && ld->self_addr_key) {
			snprintf(key, sizeof(key), "hosts.%s.%s", cfg->node, ld->self_addr_key);
			listen_key = key;
			listen_node = ld->self_addr_node;
		}
		ret = fail(ld, listen_node, listen_key,
			   "cluster_token_file is required when listening on %s%s%s:%d (not a "
			   "loopback address)",
			   v6 ? "[" : "", cfg->listen_host, v6 ? "]" : "", cfg->listen_port);
	}
out:
	kvlist_free(&l);
	return ret;
}

int config_load(const char *path, struct mfs_config **out, char *err, size_t errlen)
{
	struct loader ld = { .file = path, .err = err, .errlen = errlen };
	struct mfs_config *cfg = NULL;
	int ret;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg) {
		ret = -ENOMEM;
		goto out;
	}
	ld.cfg = cfg;
	ret = init_defaults(cfg);
	if (ret < 0)
		goto out;
	cfg->path = strdup(path);
	if (!cfg->path) {
		ret = -ENOMEM;
		goto out;
	}
	ret = config_base_dir(path, &ld.base_dir);
	if (ret < 0)
		goto out;
	ret = parse_file(&ld);
	if (ret < 0)
		goto out;
	ret = load_document(&ld);
	if (ret < 0)
		goto out;
	*out = cfg;
	cfg = NULL;
out:
	if (ret < 0 && err && errlen && !err[0])
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
	if (ld.have_doc)
		yaml_document_delete(&ld.doc);
	for (size_t i = 0; i < ld.n_warned; i++)
		free(ld.warned[i]);
	free(ld.warned);
	free(ld.base_dir);
	config_free(cfg);
	return ret;
}

static void free_host(struct cfg_host *h)
{
	free(h->name);
	free(h->address);
	free(h->root);
	for (size_t i = 0; i < CFG_MAX_CATEGORIES; i++)
		free(h->storage_paths[i]);
	for (size_t i = 0; i < h->n_shared_storage; i++)
		free(h->shared_storage[i]);
	free(h->shared_storage);
	free(h->role);
	free(h->status);
	free(h->ssh_user);
	free(h->ssh_key);
}

void config_free(struct mfs_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->path);
	free(cfg->node);
	free(cfg->token_file);
	free(cfg->token);
	free(cfg->state_dir);
	free(cfg->listen_host);
	for (size_t i = 0; i < cfg->n_categories; i++) {
		free(cfg->categories[i].name);
		free(cfg->categories[i].path);
	}
	for (size_t i = 0; i < cfg->auto_sync.n_host_bandwidth_overrides; i++)
		free(cfg->auto_sync.host_bandwidth_overrides[i].pattern);
	free(cfg->auto_sync.host_bandwidth_overrides);
	for (size_t i = 0; i < cfg->sync_routing.n_excluded_hosts; i++)
		free(cfg->sync_routing.excluded_hosts[i]);
	free(cfg->sync_routing.excluded_hosts);
	for (size_t i = 0; i < cfg->n_hosts; i++)
		free_host(&cfg->hosts[i]);
	free(cfg->hosts);
	free(cfg);
}

/* ---- queries ----------------------------------------------------------------------------- */

char *config_category_dir(const struct mfs_config *cfg, const struct cfg_host *host,
			  size_t cat_idx)
{
	char *dir = NULL;

	if (cat_idx >= cfg->n_categories)
		goto out;
	if (host->storage_paths[cat_idx]) {
		dir = strdup(host->storage_paths[cat_idx]);
	} else if (host->root && strcmp(host->root, "/") == 0) {
		/* path_join("/", x) would give "//x". */
		if (asprintf(&dir, "/%s", cfg->categories[cat_idx].path) < 0)
			dir = NULL;
	} else if (host->root) {
		dir = path_join(host->root, cfg->categories[cat_idx].path);
	}
out:
	return dir;
}

int config_category_index(const struct mfs_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_categories; i++)
		if (strcmp(cfg->categories[i].name, name) == 0)
			return (int)i;
	return -ENOENT;
}

const struct cfg_host *config_find_host(const struct mfs_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_hosts; i++)
		if (strcmp(cfg->hosts[i].name, name) == 0)
			return &cfg->hosts[i];
	return NULL;
}

bool config_is_shared(const struct cfg_host *host, const char *dir)
{
	for (size_t i = 0; i < host->n_shared_storage; i++)
		if (path_is_under(dir, host->shared_storage[i]))
			return true;
	return false;
}

int config_parse_size(const char *s, uint64_t *out)
{
	uint64_t v = 0, mult = 1;
	const char *p = s;
	int ret = -EINVAL;

	if (!s || !isdigit((unsigned char)*p))
		goto out;
	for (; isdigit((unsigned char)*p); p++)
		if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
			goto out;
	switch (*p) {
	case 'K':
	case 'k':
		mult = 1ULL << 10;
		break;
	case 'M':
	case 'm':
		mult = 1ULL << 20;
		break;
	case 'G':
	case 'g':
		mult = 1ULL << 30;
		break;
	case 'T':
	case 't':
		mult = 1ULL << 40;
		break;
	}
	if (mult > 1)
		p++;
	if (mult > 1 && strcmp(p, "iB") == 0)
		p += 2;
	else if (strcmp(p, "B") == 0)
		p++;
	if (*p || __builtin_mul_overflow(v, mult, &v))
		goto out;
	*out = v;
	ret = 0;
out:
	return ret;
}

const char *config_strategy_name(enum cfg_strategy s)
{
	if ((size_t)s < ARRAY_SIZE(strategy_names))
		return strategy_names[s];
	return "unknown";
}
