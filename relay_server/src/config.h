/* config.h — the relay's settings: defaults, command-line options and environment variables.
 * Every option has a long flag and an environment variable (flag wins over environment); one
 * table in config.c drives parsing, validation and --help so they cannot drift apart. */
#ifndef RELAY_CONFIG_H
#define RELAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };
enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };
enum flow_policy { FLOW_THROTTLE_SENDER, FLOW_DROP_RECEIVER };

#define TOKEN_MAX_BYTES 255

struct relay_config {
    /* --listen ADDRESS (RELAY_LISTEN, default "0.0.0.0"); --port N (RELAY_PORT or PORT,
     * default 8787; 0 picks a free port, printed on stdout as "listening on HOST:PORT") */
    char listen_address[128];
    int port;
    /* --tls-cert FILE / --tls-key FILE (RELAY_TLS_CERT / RELAY_TLS_KEY): both or neither */
    char tls_cert_path[4096];
    char tls_key_path[4096];
    /* --max-message-size BYTES (RELAY_MAX_MESSAGE_SIZE, default 64 MiB); sizes accept K/M/G */
    uint64_t max_message_size;
    /* --max-text-size BYTES (RELAY_MAX_TEXT_SIZE, default 1 MiB): JSON control messages */
    uint64_t max_text_size;
    /* --max-room-members N (RELAY_MAX_ROOM_MEMBERS, default 64) */
    unsigned max_room_members;
    /* --max-rooms N (RELAY_MAX_ROOMS, default 10000) */
    unsigned max_rooms;
    /* --max-connections N (RELAY_MAX_CONNECTIONS, default 10000) */
    unsigned max_connections;
    /* --join-rate N (RELAY_JOIN_RATE, default 30): failed joins (unknown code) per address per
     * minute; past it every join is refused unevaluated (resume is not limited) */
    unsigned join_attempts_per_minute;
    /* --global-join-failure-rate N (RELAY_GLOBAL_JOIN_FAILURE_RATE, default 3000): failed joins
     * per minute from all addresses together, so that many addresses cannot guess faster */
    unsigned failed_joins_per_minute;
    /* --max-rooms-per-address N (RELAY_MAX_ROOMS_PER_ADDRESS, default 64): rooms (live, in their
     * resume grace, or reserved) created from one address (IPv6: one /64) */
    unsigned max_rooms_per_address;
    /* --create-rate N (RELAY_CREATE_RATE, default 60): rooms created per address per minute */
    unsigned rooms_created_per_minute;
    /* --max-connections-per-address N (RELAY_MAX_CONNECTIONS_PER_ADDRESS, default 256): open
     * TCP connections from one address (IPv6: one /64), WebSocket or not */
    unsigned max_connections_per_address;
    /* --max-handshakes-per-address N (RELAY_MAX_HANDSHAKES_PER_ADDRESS, default 8): connections
     * from one address still in their HTTP/WebSocket handshake */
    unsigned max_handshakes_per_address;
    /* --token-file FILE (RELAY_TOKEN_FILE) or RELAY_TOKEN: optional shared access token.
     * Never on the command line (it would show in ps); never logged. */
    char access_token[TOKEN_MAX_BYTES + 1];
    bool access_token_set;
    /* --secret-file FILE (RELAY_SECRET_FILE): key for resume tokens; created (mode 0600) if
     * missing. Without it the key is resume.key in the state directory (state_dir.h), so that
     * a plain restart keeps every room; a LAN session uses a per-process key. */
    char secret_file[4096];
    /* --state-dir DIR (RELAY_STATE_DIR): where the relay keeps its state (the resume key);
     * default $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/segmentation-suite-relay, else
     * ~/.local/state/segmentation-suite-relay */
    char state_dir[4096];
    /* --ping-interval SECONDS (RELAY_PING_INTERVAL, default 30; 0 disables pings) */
    unsigned ping_interval_seconds;
    /* --idle-timeout SECONDS (RELAY_IDLE_TIMEOUT, default 90): close after silence this long */
    unsigned idle_timeout_seconds;
    /* --handshake-timeout SECONDS (RELAY_HANDSHAKE_TIMEOUT, default 5) */
    unsigned handshake_timeout_seconds;
    /* --resume-grace SECONDS (RELAY_RESUME_GRACE, default 30) */
    unsigned resume_grace_seconds;
    /* --receiver-buffer BYTES (RELAY_RECEIVER_BUFFER, default 16 MiB): outbound bytes queued
     * for one receiver before its senders are throttled */
    uint64_t receiver_buffer_bytes;
    /* --flow-control throttle|drop (RELAY_FLOW_CONTROL, default throttle) */
    enum flow_policy flow_policy;
    /* --slow-receiver-timeout SECONDS (RELAY_SLOW_RECEIVER_TIMEOUT, default 15): a receiver
     * over its buffer that makes no progress this long is closed with 4008 */
    unsigned slow_receiver_timeout_seconds;
    /* --log-format text|json (RELAY_LOG_FORMAT, default text); --log-level
     * debug|info|warn|error (RELAY_LOG_LEVEL, default info) */
    enum log_format log_format;
    enum log_level log_level;
    /* --lan-host-token-file FILE (RELAY_LAN_HOST_TOKEN_FILE) or RELAY_LAN_HOST_TOKEN: serve one
     * LAN session instead of rooms. The connection that sends `create_room` with this token in
     * `host_token` is the session's host; everyone else says `hello` and talks only to it. */
    char lan_host_token[TOKEN_MAX_BYTES + 1];
    bool lan_mode;
    /* --allowed-origin ORIGIN, repeatable (RELAY_ALLOWED_ORIGINS, comma-separated): WebSocket
     * upgrades whose Origin header names another origin get 403. Empty: any origin. Stored as
     * one comma-separated list. */
    char allowed_origins[4096];
    /* --enable-echo (RELAY_ENABLE_ECHO=1): test-only /echo endpoint for RFC 6455 conformance */
    bool enable_echo;
};

/* Fills `config` with the defaults. */
void config_defaults(struct relay_config *config);

/* Applies environment variables and argv on top of `config` (call config_defaults first). A
 * flag wins over its environment variable, which is then not even parsed; a repeated flag's
 * last value wins; long options must be spelled out in full (no getopt prefixes, so that
 * "--token SECRET" is refused instead of read as --token-file). Returns 0 on success; on
 * --help/-h or --version/-V prints to stdout and returns 1; on a bad value writes one line
 * (no newline) naming the flag or environment variable and what was expected to `error` (size
 * `error_size`) and returns -1. Reads the token file if one is named; error messages never
 * contain the token. */
int config_load(struct relay_config *config, int argc, char **argv, char *error, size_t error_size);

/* Parses "64M", "1G", "4096", "512K" into bytes (K/M/G are powers of 1024, either case);
 * returns -1, leaving `bytes` alone, if malformed (sign, space, fraction, other suffix) or
 * overflowing 64 bits. */
int config_parse_size(const char *text, uint64_t *bytes);

/* Whether a WebSocket upgrade carrying `origin` (NULL: no Origin header, as from programs other
 * than browsers, which are not what the check protects) is allowed by --allowed-origin. Origins
 * compare exactly (scheme://host[:port], ASCII case-insensitive), as browsers send them. */
bool config_origin_allowed(const struct relay_config *config, const char *origin);

/* Writes the --help text (every option, its environment variable and default, by group) to
 * `out`, a FILE *. */
void config_print_help(const char *program, void *out);

#endif
