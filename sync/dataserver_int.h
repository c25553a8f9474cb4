/*
 * dataserver_int — what sync/dataserver.c and sync/dataserver_files.c share. Private to the
 * data server: nothing else includes it; the API is sync/dataserver.h.
 *
 * dataserver.c owns the server (struct dataserver, struct request, the counters) and answers
 * requests through the helpers below, which queue a response and count it; dataserver_files.c
 * has the routes that serve files and chunk lists. Both run on MHD's threads; none of these
 * functions holds a lock.
 */
#ifndef MESHFS_DATASERVER_INT_H
#define MESHFS_DATASERVER_INT_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "sync/dataserver.h"

struct request;

/* The daemon @s serves (borrowed, lives as long as @s). */
struct daemon *dataserver_daemon(const struct dataserver *s);

/* Whether @rq is a HEAD request (headers only: no body is sent). */
bool dataserver_is_head(const struct request *rq);

/*
 * Queues @resp with @code (the response is released here in every case) and counts it; the
 * @body_len bytes of its body are counted once they are sent. Returns what MHD_queue_response
 * returns; MHD_NO (the connection is closed) when @resp is NULL.
 */
enum MHD_Result dataserver_queue(struct dataserver *s, struct request *rq,
				 struct MHD_Connection *conn, unsigned code,
				 struct MHD_Response *resp, uint64_t body_len);
/* Adds a header to @resp; a NULL @name adds nothing. False when MHD refuses it. */
bool dataserver_add_header(struct MHD_Response *resp, const char *name, const char *value);
/* Queues @body (borrowed) as one line of JSON with @code, plus one optional header (@hname
 * NULL for none). */
enum MHD_Result dataserver_respond_json(struct dataserver *s, struct request *rq,
					struct MHD_Connection *conn, unsigned code, json_t *body,
					const char *hname, const char *hval);
/* Queues {"error": @msg} with @code, plus one optional header. */
enum MHD_Result dataserver_respond_error(struct dataserver *s, struct request *rq,
					 struct MHD_Connection *conn, unsigned code,
					 const char *msg, const char *hname, const char *hval);
/* The answer to a failed lookup or open, @err being -errno: 400 for -EINVAL, 404 for what
 * is not there or not reachable, 503 with Retry-After for -ESTALE and exhausted fds, else
 * 500. */
enum MHD_Result dataserver_respond_errno(struct dataserver *s, struct request *rq,
					 struct MHD_Connection *conn, int err);

/* In dataserver_files.c: GET/HEAD /v1/chunks/<raw> and /v1/files/<raw>, @raw being the
 * still percent-encoded "<category>/<path>" after the prefix. */
enum MHD_Result dataserver_route_chunks(struct dataserver *s, struct request *rq,
					struct MHD_Connection *conn, const char *raw);
enum MHD_Result dataserver_route_files(struct dataserver *s, struct request *rq,
				       struct MHD_Connection *conn, const char *raw);

#endif
