/*
 * control — the daemon's unix socket (<state_dir>/control.sock) and its client.
 *
 * One request per connection: the client writes one JSON object and a newline
 * ({"cmd": "status"}), the daemon answers with one JSON object and closes. A thread
 * ("meshfs-ctl") accepts connections; each request has a 5 s deadline on both sides so a stuck
 * peer cannot hang the daemon or the command.
 */
#ifndef MESHFS_CONTROL_H
#define MESHFS_CONTROL_H

#include <jansson.h>

struct control;
struct daemon;

/* Binds the socket (replacing a stale one) and starts the thread. 0 or -errno. */
int control_start(struct daemon *d, struct control **out);
void control_stop(struct control *c);

/* Stops the `meshfs sync` worker (it drives the fetcher) while the socket keeps serving the
 * other commands; daemon_stop_fetch() must call it before fetch_stop(). @c may be NULL. */
void control_stop_sync(struct control *c);

/*
 * Sends @req to the daemon whose state dir is @state_dir and returns its answer in *resp
 * (json_decref it). -ECONNREFUSED/-ENOENT when no daemon listens (the caller prints
 * "no meshfs daemon is running (socket …)"), -ETIMEDOUT after the deadline.
 */
int control_request(const char *state_dir, json_t *req, json_t **resp);

/* The same with a deadline of @timeout_ms instead of 5 s, for commands that take long (check):
 * the daemon answers them on its control thread while other requests wait. */
int control_request_timeout(const char *state_dir, json_t *req, json_t **resp, int timeout_ms);

#endif
