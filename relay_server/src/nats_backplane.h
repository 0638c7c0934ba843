/* nats_backplane.h — the cluster's I/O: a relay node's connection to NATS (core subjects for
 * delivery, a JetStream KV bucket for the room directory). nats.c calls back on its own threads;
 * everything for the core is queued and handed over on the lws service thread. */
#ifndef NATS_BACKPLANE_H
#define NATS_BACKPLANE_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "relay_core.h"

struct nats_backplane;

/* Connects to the servers in config->nats_urls and opens (or makes) the directory bucket.
 * `wake` is called from other threads when envelopes wait (lws_cancel_service). NULL, with a
 * one-line `error`, if NATS cannot be reached or has no JetStream. */
struct nats_backplane *nats_backplane_start(const struct relay_config *config,
                                            void (*wake)(void *context), void *wake_context,
                                            char *error, size_t error_size);

/* The hooks the core calls (relay_attach_cluster). */
const struct relay_cluster_io *nats_backplane_io(struct nats_backplane *backplane);

/* On the service thread: hands every waiting envelope and lost node to the core. */
void nats_backplane_deliver(struct nats_backplane *backplane, struct relay *relay, double now);

/* Stops the heartbeat, removes this node's directory entries, closes the connection. */
void nats_backplane_stop(struct nats_backplane *backplane);

#endif
