/*
 * config_yaml — the generic libyaml layer under config.c: loading one YAML file and reading
 * its maps and scalars the way PyYAML does, with errors that name file, line and key.
 *
 * The file is read whole (at most MAX_CONFIG_BYTES) and loaded with yaml_parser_load() into
 * one yaml_document_t; a second document is refused, as PyYAML's safe_load does. Nothing is
 * copied out of the document: pairs and scalars point into it, and every node keeps its line
 * for messages. Maps are flattened on demand (map_pairs_at): a map's own keys first, a key
 * given twice counting once with its later value, then what its merge keys ("<<") bring in,
 * earlier merged maps winning. Each error is formatted once into the caller's buffer and
 * returned as -EINVAL; each warning is logged once per key path (the warned set in struct
 * cfgy). The meshfs schema — which keys exist and what they mean — lives in config.c.
 */
#include "sync/config_yaml.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
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

/* Far beyond any real hosts file; only a guard against loading something else by mistake. */
#define MAX_CONFIG_BYTES (16u << 20)
/* Merge keys can reach back to an enclosing anchor; this bounds that cycle. */
#define MAX_MERGE_DEPTH 8

/* ---- messages ---------------------------------------------------------------------------- */

size_t cfgy_line(const yaml_node_t *node)
{
	return node ? node->start_mark.line + 1 : 0;
}

static const char *scalar_str(const yaml_node_t *node)
{
	return (const char *)node->data.scalar.value;
}

bool cfgy_is_null(const yaml_node_t *node)
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

const char *cfgy_describe(const yaml_node_t *node, char *buf, size_t len)
{
	const char *v;
	size_t i, o = 0;

	if (cfgy_is_null(node))
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

int cfgy_fail(struct cfgy *y, const yaml_node_t *node, const char *key, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!y->err || y->errlen == 0)
		goto out;
	if (node && key)
		snprintf(y->err, y->errlen, "%s:%zu: key '%s': %s", y->file, cfgy_line(node), key,
			 msg);
	else if (node)
		snprintf(y->err, y->errlen, "%s:%zu: %s", y->file, cfgy_line(node), msg);
	else if (key)
		snprintf(y->err, y->errlen, "%s: key '%s': %s", y->file, key, msg);
	else
		snprintf(y->err, y->errlen, "%s: %s", y->file, msg);
	sanitize(y->err);
out:
	return -EINVAL;
}

const char *cfgy_keypath(char *buf, size_t len, const char *prefix, const char *key)
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
static int first_time(struct cfgy *y, const char *kind, const char *path)
{
	char **grown;
	char *tag = NULL;
	int ret = 0;

	if (asprintf(&tag, "%s:%s", kind, path) < 0) {
		tag = NULL;
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < y->n_warned; i++)
		if (strcmp(y->warned[i], tag) == 0)
			goto out;
	grown = realloc(y->warned, (y->n_warned + 1) * sizeof(*grown));
	if (!grown) {
		ret = -ENOMEM;
		goto out;
	}
	y->warned = grown;
	y->warned[y->n_warned++] = tag;
	tag = NULL;
	ret = 1;
out:
	free(tag);
	return ret;
}

int cfgy_warn_unknown(struct cfgy *y, const struct cfgy_kv *kv, const char *warn_prefix)
{
	char path[CFGY_KEY_MAX];
	int ret;

	cfgy_keypath(path, sizeof(path), warn_prefix, kv->key);
	ret = first_time(y, "unknown", path);
	if (ret > 0) {
		log_msg(LOG_WARNING, "config %s:%zu: ignoring unknown key '%s'", y->file,
			cfgy_line(kv->key_node), path);
		ret = 0;
	}
	return ret;
}

/* ---- maps and lists as PyYAML sees them -------------------------------------------------- */

yaml_node_t *cfgy_node(struct cfgy *y, int index)
{
	return yaml_document_get_node(&y->doc, index);
}

static bool is_merge_key(const yaml_node_t *key)
{
	return key->type == YAML_SCALAR_NODE && key->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
	       strcmp(scalar_str(key), "<<") == 0;
}

const struct cfgy_kv *cfgy_kv_find(const struct cfgy_kvlist *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].key, key) == 0)
			return &l->v[i];
	return NULL;
}

static int kv_push(struct cfgy_kvlist *l, yaml_node_t *key, yaml_node_t *val)
{
	struct cfgy_kv *grown;
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
	l->v[l->n++] = (struct cfgy_kv){ scalar_str(key), key, val };
out:
	return ret;
}

void cfgy_kvlist_free(struct cfgy_kvlist *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static int check_key(struct cfgy *y, const yaml_node_t *key, const struct cfgy_sect *s)
{
	char got[96];
	int ret = 0;

	if (!key || key->type != YAML_SCALAR_NODE)
		ret = cfgy_fail(y, key, s->err, "expected a string as key, got %s",
				key ? cfgy_describe(key, got, sizeof(got)) : "nothing");
	else if (strlen(scalar_str(key)) != key->data.scalar.length)
		ret = cfgy_fail(y, key, s->err, "a key contains a NUL byte");
	return ret;
}

static int map_pairs_at(struct cfgy *y, yaml_node_t *map, const struct cfgy_sect *s, int depth,
			struct cfgy_kvlist *out);

static int merge_into(struct cfgy *y, yaml_node_t *src, const struct cfgy_sect *s, int depth,
		      struct cfgy_kvlist *out)
{
	char got[96];
	int ret = 0;

	if (src && src->type == YAML_MAPPING_NODE) {
		ret = map_pairs_at(y, src, s, depth + 1, out);
	} else if (src && src->type == YAML_SEQUENCE_NODE) {
		/* Earlier maps win, as in PyYAML: each adds only keys not seen yet. */
		for (yaml_node_item_t *it = src->data.sequence.items.start;
		     ret == 0 && it < src->data.sequence.items.top; it++) {
			yaml_node_t *m = cfgy_node(y, *it);

			if (!m || m->type != YAML_MAPPING_NODE)
				ret = cfgy_fail(y, m, s->err,
						"expected a map to merge ('<<'), got %s",
						m ? cfgy_describe(m, got, sizeof(got)) : "nothing");
			else
				ret = map_pairs_at(y, m, s, depth + 1, out);
		}
	} else {
		ret = cfgy_fail(y, src, s->err,
				"expected a map or a list of maps to merge ('<<'), got %s",
				cfgy_describe(src, got, sizeof(got)));
	}
	return ret;
}

/*
 * Appends the pairs of @map that @out does not hold yet: first its own keys (a key given
 * twice counts once, with its later value), then what its merge keys bring in.
 */
static int map_pairs_at(struct cfgy *y, yaml_node_t *map, const struct cfgy_sect *s, int depth,
			struct cfgy_kvlist *out)
{
	yaml_node_pair_t *start = map->data.mapping.pairs.start, *top = map->data.mapping.pairs.top;
	char path[CFGY_KEY_MAX];
	int ret = 0;

	if (depth > MAX_MERGE_DEPTH) {
		ret = cfgy_fail(y, map, s->err, "merge keys ('<<') nest more than %d deep",
				MAX_MERGE_DEPTH);
		goto out;
	}
	for (yaml_node_pair_t *p = start; p < top; p++) {
		yaml_node_t *k = cfgy_node(y, p->key), *later = NULL;

		ret = check_key(y, k, s);
		if (ret < 0)
			goto out;
		if (is_merge_key(k))
			continue;
		for (yaml_node_pair_t *q = p + 1; q < top && !later; q++) {
			yaml_node_t *k2 = cfgy_node(y, q->key);

			if (k2 && k2->type == YAML_SCALAR_NODE && !is_merge_key(k2) &&
			    strcmp(scalar_str(k2), scalar_str(k)) == 0)
				later = k2;
		}
		if (later) {
			cfgy_keypath(path, sizeof(path), s->warn, scalar_str(k));
			ret = first_time(y, "twice", path);
			if (ret < 0)
				goto out;
			if (ret > 0)
				log_msg(LOG_WARNING,
					"config %s:%zu: key '%s' is given again on line %zu; "
					"using the later value",
					y->file, cfgy_line(k), path, cfgy_line(later));
			ret = 0;
			continue;
		}
		if (cfgy_kv_find(out, scalar_str(k)))
			continue;
		ret = kv_push(out, k, cfgy_node(y, p->value));
		if (ret < 0)
			goto out;
	}
	for (yaml_node_pair_t *p = start; p < top; p++) {
		if (!is_merge_key(cfgy_node(y, p->key)))
			continue;
		ret = merge_into(y, cfgy_node(y, p->value), s, depth, out);
		if (ret < 0)
			goto out;
	}
out:
	return ret;
}

int cfgy_map_pairs(struct cfgy *y, yaml_node_t *node, const struct cfgy_sect *s, const char *what,
		   struct cfgy_kvlist *out)
{
	char got[96];
	int ret = 0;

	memset(out, 0, sizeof(*out));
	if (cfgy_is_null(node))
		goto out;
	if (node->type != YAML_MAPPING_NODE) {
		ret = cfgy_fail(y, node, s->err, "expected %s, got %s", what,
				cfgy_describe(node, got, sizeof(got)));
		goto out;
	}
	ret = map_pairs_at(y, node, s, 0, out);
	if (ret < 0)
		cfgy_kvlist_free(out);
out:
	return ret;
}

int cfgy_get_seq(struct cfgy *y, const yaml_node_t *node, const char *key, const char *what,
		 size_t *n)
{
	char got[96];
	int ret = 0;

	*n = 0;
	if (cfgy_is_null(node))
		goto out;
	if (node->type != YAML_SEQUENCE_NODE)
		ret = cfgy_fail(y, node, key, "expected %s, got %s", what,
				cfgy_describe(node, got, sizeof(got)));
	else
		*n = node->data.sequence.items.top - node->data.sequence.items.start;
out:
	return ret;
}

/* ---- scalar values ----------------------------------------------------------------------- */

int cfgy_get_scalar(struct cfgy *y, const yaml_node_t *node, const char *key, const char *what,
		    const char **out)
{
	char got[96];
	int ret = 0;

	*out = NULL;
	if (cfgy_is_null(node))
		goto out;
	if (node->type != YAML_SCALAR_NODE)
		ret = cfgy_fail(y, node, key, "expected %s, got %s", what,
				cfgy_describe(node, got, sizeof(got)));
	else if (strlen(scalar_str(node)) != node->data.scalar.length)
		ret = cfgy_fail(y, node, key, "expected %s, got a value with a NUL byte", what);
	else
		*out = scalar_str(node);
out:
	return ret;
}

static int get_int(struct cfgy *y, const yaml_node_t *node, const char *key, long min, long max,
		   const char *what, int *out)
{
	const char *s;
	char got[96], *end;
	long long v;
	int ret;

	ret = cfgy_get_scalar(y, node, key, what, &s);
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
	ret = cfgy_fail(y, node, key, "expected %s, got %s", what,
			cfgy_describe(node, got, sizeof(got)));
out:
	return ret;
}

int cfgy_parse_number(const char *s, double *out)
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

int cfgy_get_number(struct cfgy *y, const yaml_node_t *node, const char *key, double *out)
{
	static const char what[] = "a number >= 0";
	const char *s;
	char got[96];
	int ret;

	ret = cfgy_get_scalar(y, node, key, what, &s);
	if (ret == 0 && s && cfgy_parse_number(s, out) < 0)
		ret = cfgy_fail(y, node, key, "expected %s, got %s", what,
				cfgy_describe(node, got, sizeof(got)));
	return ret;
}

static int get_bool(struct cfgy *y, const yaml_node_t *node, const char *key, bool *out)
{
	/* YAML 1.1 booleans, which is what PyYAML reads. */
	static const char *const yes[] = { "true", "yes", "on" };
	static const char *const no[] = { "false", "no", "off" };
	const char *s;
	char got[96];
	int ret;

	ret = cfgy_get_scalar(y, node, key, "true or false", &s);
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
	ret = cfgy_fail(y, node, key, "expected true or false, got %s",
			cfgy_describe(node, got, sizeof(got)));
out:
	return ret;
}

int cfgy_get_string(struct cfgy *y, const yaml_node_t *node, const char *key, char **out)
{
	const char *s;
	char *copy;
	int ret;

	ret = cfgy_get_scalar(y, node, key, "a string", &s);
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

int cfgy_set_field(struct cfgy *y, void *base, const struct cfgy_field *f, const yaml_node_t *node,
		   const char *key)
{
	char *p = (char *)base + f->off;
	int ret = 0;

	switch (f->type) {
	case CFGY_BOOL:
		ret = get_bool(y, node, key, (bool *)p);
		break;
	case CFGY_INT_POS:
		ret = get_int(y, node, key, 1, INT_MAX, "a positive integer", (int *)p);
		break;
	case CFGY_INT_NONNEG:
		ret = get_int(y, node, key, 0, INT_MAX, "a non-negative integer", (int *)p);
		break;
	case CFGY_PORT:
		ret = get_int(y, node, key, 1, 65535, "a port number (1-65535)", (int *)p);
		break;
	case CFGY_NUM:
		ret = cfgy_get_number(y, node, key, (double *)p);
		break;
	case CFGY_STR:
		ret = cfgy_get_string(y, node, key, (char **)p);
		break;
	case CFGY_SPECIAL:
		break;
	}
	return ret;
}

const struct cfgy_field *cfgy_find_field(const struct cfgy_field *fields, size_t n,
					 const char *name)
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
static int resolve_path(struct cfgy *y, const yaml_node_t *node, const char *key, const char *value,
			bool expand_home, char **out)
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
			ret = cfgy_fail(y, node, key,
					"expected a path ('~user' paths are not supported), "
					"got '%s'",
					value);
			goto out;
		}
		if (home_dir(home, sizeof(home)) < 0) {
			ret = cfgy_fail(y, node, key, "cannot expand '~': $HOME is not set");
			goto out;
		}
		path = path_join(home, value[1] ? value + 2 : "");
	} else if (value[0] == '/') {
		path = strdup(value);
	} else {
		path = path_join(y->base_dir, value);
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

/* cfgy_get_string() + resolve_path(). */
int cfgy_get_path(struct cfgy *y, const yaml_node_t *node, const char *key, bool expand_home,
		  char **out)
{
	const char *s;
	char *path = NULL;
	int ret;

	ret = cfgy_get_scalar(y, node, key, "a path", &s);
	if (ret < 0 || !s || !*s)
		goto out;
	ret = resolve_path(y, node, key, s, expand_home, &path);
	if (ret < 0)
		goto out;
	free(*out);
	*out = path;
out:
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
		n = read_upto(fd, buf + len, cap - len);
		if (n < 0) {
			ret = (int)n;
			goto out;
		}
		len += (size_t)n;
		if (len < cap)
			break; /* a short count: the end of the file */
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

static int syntax_error(struct cfgy *y, const yaml_parser_t *parser, const unsigned char *buf,
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
	if (y->err && y->errlen)
		snprintf(y->err, y->errlen, "%s:%zu:%zu: YAML syntax error: %s%s%s%s", y->file,
			 line, col, problem, parser->context ? " (" : "",
			 parser->context ? parser->context : "", parser->context ? ")" : "");
out:
	return ret;
}

/* Loads the one YAML document of the file into y->doc. */
static int parse_file(struct cfgy *y)
{
	unsigned char *buf = NULL;
	yaml_parser_t parser;
	yaml_document_t extra;
	bool have_parser = false;
	size_t len = 0;
	int ret;

	ret = read_config_file(y->file, &buf, &len);
	if (ret < 0) {
		if (y->err && y->errlen)
			snprintf(y->err, y->errlen, "%s: cannot read the config file: %s", y->file,
				 strerror(-ret));
		goto out;
	}
	if (!yaml_parser_initialize(&parser)) {
		ret = -ENOMEM;
		goto out;
	}
	have_parser = true;
	yaml_parser_set_input_string(&parser, buf, len);
	if (!yaml_parser_load(&parser, &y->doc)) {
		ret = syntax_error(y, &parser, buf, len);
		goto out;
	}
	y->have_doc = true;
	if (!yaml_document_get_root_node(&y->doc))
		goto out;
	/* A second document would be silently ignored; PyYAML's safe_load refuses it too. */
	if (!yaml_parser_load(&parser, &extra)) {
		ret = syntax_error(y, &parser, buf, len);
		goto out;
	}
	if (yaml_document_get_root_node(&extra))
		ret = cfgy_fail(y, yaml_document_get_root_node(&extra), NULL,
				"expected one YAML document, found a second one");
	yaml_document_delete(&extra);
out:
	if (have_parser)
		yaml_parser_delete(&parser);
	free(buf);
	return ret;
}

/* The absolute directory that holds @path (not resolving symlinks). */
static int base_dir_of(const char *path, char **out)
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

int cfgy_open(struct cfgy *y, const char *file, char *err, size_t errlen)
{
	int ret;

	y->file = file;
	y->err = err;
	y->errlen = errlen;
	ret = base_dir_of(file, &y->base_dir);
	if (ret < 0)
		goto out;
	ret = parse_file(y);
out:
	return ret;
}

void cfgy_close(struct cfgy *y)
{
	if (y->have_doc)
		yaml_document_delete(&y->doc);
	y->have_doc = false;
	for (size_t i = 0; i < y->n_warned; i++)
		free(y->warned[i]);
	free(y->warned);
	y->warned = NULL;
	y->n_warned = 0;
	free(y->base_dir);
	y->base_dir = NULL;
}

yaml_node_t *cfgy_root(struct cfgy *y)
{
	return yaml_document_get_root_node(&y->doc);
}
