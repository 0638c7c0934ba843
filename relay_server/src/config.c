/* config.c — the relay's settings from environment variables and command-line flags.
 * One table (`options` below) drives defaults, parsing, validation and --help, so that an
 * option cannot be documented one way and behave another. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "version.h"

enum option_kind {
    OPTION_ADDRESS,    /* an IPv4 or IPv6 literal, stored as a string */
    OPTION_PORT,       /* int 0..65535 */
    OPTION_UINT,       /* unsigned within [minimum, maximum] */
    OPTION_SECONDS,    /* unsigned within [minimum, maximum], in seconds */
    OPTION_SIZE,       /* uint64_t bytes within [minimum, maximum], K/M/G suffixes */
    OPTION_ENUM,       /* one of `choices`, stored as an int-sized enum */
    OPTION_FLAG,       /* bool; a flag without value, or 1/0 true/false yes/no on/off in env */
    OPTION_FILE,       /* a path to a readable regular file, stored as a string */
    OPTION_PATH,       /* a path that may not exist yet, stored as a string */
    OPTION_LIST,       /* a repeatable flag; values (each may be comma-separated) joined by ',' */
    OPTION_TOKEN_FILE, /* a file whose contents become a token (access or LAN host) */
    OPTION_TOKEN,      /* a token itself: environment only, never a flag */
    OPTION_HELP,
    OPTION_VERSION,
};

enum option_group {
    GROUP_NETWORK,
    GROUP_TLS,
    GROUP_ACCESS,
    GROUP_LIMITS,
    GROUP_TIMEOUTS,
    GROUP_FLOW_CONTROL,
    GROUP_LOGGING,
    GROUP_LAN,
    GROUP_TESTING,
    GROUP_GENERAL,
    GROUP_COUNT,
};

static const char *const group_titles[GROUP_COUNT] = {
    [GROUP_NETWORK] = "Network",   [GROUP_TLS] = "TLS (wss://)",
    [GROUP_ACCESS] = "Access",     [GROUP_LIMITS] = "Limits",
    [GROUP_TIMEOUTS] = "Timeouts", [GROUP_FLOW_CONTROL] = "Flow control",
    [GROUP_LOGGING] = "Logging",   [GROUP_LAN] = "LAN session (AggregationServer)",
    [GROUP_TESTING] = "Testing",   [GROUP_GENERAL] = "General",
};

struct enum_choice {
    const char *name;
    int value;
};

static const struct enum_choice log_format_choices[] = {
    {"text", LOG_FORMAT_TEXT}, {"json", LOG_FORMAT_JSON}, {NULL, 0}};
static const struct enum_choice log_level_choices[] = {{"debug", LOG_LEVEL_DEBUG},
                                                       {"info", LOG_LEVEL_INFO},
                                                       {"warn", LOG_LEVEL_WARN},
                                                       {"error", LOG_LEVEL_ERROR},
                                                       {NULL, 0}};
static const struct enum_choice flow_policy_choices[] = {
    {"throttle", FLOW_THROTTLE_SENDER}, {"drop", FLOW_DROP_RECEIVER}, {NULL, 0}};

struct option_spec {
    const char *name;     /* long flag without "--"; NULL for environment-only settings */
    const char *argument; /* placeholder in --help; NULL for options without a value */
    const char *env[2];   /* environment variables, the first set one wins */
    enum option_kind kind;
    enum option_group group;
    const char *default_text; /* parsed like user input by config_defaults; NULL: unset */
    size_t offset, field_size;
    uint64_t minimum, maximum;
    const struct enum_choice *choices;
    const char *help;
};

#define FIELD(member)                                                                              \
    .offset = offsetof(struct relay_config, member),                                               \
    .field_size = sizeof(((struct relay_config *)0)->member)
#define KIB UINT64_C(1024)
#define MIB (KIB * KIB)
#define GIB (MIB * KIB)
#define ONE_WEEK_SECONDS 604800

/* Limits on sizes: a message of more than 1 TiB is a mistake, not a plan. */
static const struct option_spec options[] = {
    {"listen",
     "ADDRESS",
     {"RELAY_LISTEN"},
     OPTION_ADDRESS,
     GROUP_NETWORK,
     "0.0.0.0",
     FIELD(listen_address),
     .help = "address to listen on; \"::\" for every IPv6 and IPv4 address"},
    {"port",
     "N",
     {"RELAY_PORT", "PORT"},
     OPTION_PORT,
     GROUP_NETWORK,
     "8787",
     FIELD(port),
     0,
     65535,
     .help = "TCP port; 0 picks a free one (printed as \"listening on HOST:PORT\")"},
    {"tls-cert",
     "FILE",
     {"RELAY_TLS_CERT"},
     OPTION_FILE,
     GROUP_TLS,
     NULL,
     FIELD(tls_cert_path),
     .help = "PEM certificate chain; serves wss:// (needs --tls-key)"},
    {"tls-key",
     "FILE",
     {"RELAY_TLS_KEY"},
     OPTION_FILE,
     GROUP_TLS,
     NULL,
     FIELD(tls_key_path),
     .help = "PEM private key of the certificate (needs --tls-cert)"},
    {"token-file",
     "FILE",
     {"RELAY_TOKEN_FILE"},
     OPTION_TOKEN_FILE,
     GROUP_ACCESS,
     NULL,
     FIELD(access_token),
     .help = "file holding the access token clients must send (Authorization: Bearer)"},
    {NULL,
     "TOKEN",
     {"RELAY_TOKEN"},
     OPTION_TOKEN,
     GROUP_ACCESS,
     NULL,
     FIELD(access_token),
     .help = "the access token itself (there is no flag: it would show in ps)"},
    {"secret-file",
     "FILE",
     {"RELAY_SECRET_FILE"},
     OPTION_PATH,
     GROUP_ACCESS,
     NULL,
     FIELD(secret_file),
     .help = "key for resume tokens, created (mode 0600) if missing; default resume.key in the "
             "state directory"},
    {"state-dir",
     "DIR",
     {"RELAY_STATE_DIR"},
     OPTION_PATH,
     GROUP_ACCESS,
     NULL,
     FIELD(state_dir),
     .help = "where the relay keeps its resume key across restarts (created, mode 0700); "
             "default $STATE_DIRECTORY under systemd, else $XDG_STATE_HOME/"
             "segmentation-suite-relay, else ~/.local/state/segmentation-suite-relay"},
    {"lan-host-token-file",
     "FILE",
     {"RELAY_LAN_HOST_TOKEN_FILE"},
     OPTION_TOKEN_FILE,
     GROUP_LAN,
     NULL,
     FIELD(lan_host_token),
     .help = "serve one LAN session: the connection whose create_room carries this file's "
             "token (host_token) hosts it; the others send hello"},
    {NULL,
     "TOKEN",
     {"RELAY_LAN_HOST_TOKEN"},
     OPTION_TOKEN,
     GROUP_LAN,
     NULL,
     FIELD(lan_host_token),
     .help = "the LAN host token itself (there is no flag: it would show in ps)"},
    {"max-message-size",
     "BYTES",
     {"RELAY_MAX_MESSAGE_SIZE"},
     OPTION_SIZE,
     GROUP_LIMITS,
     "64M",
     FIELD(max_message_size),
     1,
     1024 * GIB,
     .help = "largest binary message; a larger one closes its sender with 1009"},
    {"max-text-size",
     "BYTES",
     {"RELAY_MAX_TEXT_SIZE"},
     OPTION_SIZE,
     GROUP_LIMITS,
     "1M",
     FIELD(max_text_size),
     64,
     64 * MIB,
     .help = "largest text (JSON control) message; a larger one closes its sender with 1009"},
    {"max-room-members",
     "N",
     {"RELAY_MAX_ROOM_MEMBERS"},
     OPTION_UINT,
     GROUP_LIMITS,
     "64",
     FIELD(max_room_members),
     1,
     1000000,
     .help = "members per room (ROOM_FULL beyond)"},
    {"max-rooms",
     "N",
     {"RELAY_MAX_ROOMS"},
     OPTION_UINT,
     GROUP_LIMITS,
     "10000",
     FIELD(max_rooms),
     1,
     10000000,
     .help = "rooms in this relay (TOO_MANY_ROOMS beyond)"},
    {"max-connections",
     "N",
     {"RELAY_MAX_CONNECTIONS"},
     OPTION_UINT,
     GROUP_LIMITS,
     "10000",
     FIELD(max_connections),
     1,
     10000000,
     .help = "open WebSocket connections; also bounded by the process's file limit"},
    {"join-rate",
     "N",
     {"RELAY_JOIN_RATE"},
     OPTION_UINT,
     GROUP_LIMITS,
     "30",
     FIELD(join_attempts_per_minute),
     1,
     1000000,
     .help = "failed joins (unknown code) per client address per minute; past it every join "
             "is refused unevaluated (RATE_LIMITED); resume is not limited"},
    {"global-join-failure-rate",
     "N",
     {"RELAY_GLOBAL_JOIN_FAILURE_RATE"},
     OPTION_UINT,
     GROUP_LIMITS,
     "3000",
     FIELD(failed_joins_per_minute),
     1,
     10000000,
     .help = "failed joins per minute from all addresses together; past it "
             "every join is refused unevaluated for a moment (RATE_LIMITED)"},
    {"max-rooms-per-address",
     "N",
     {"RELAY_MAX_ROOMS_PER_ADDRESS"},
     OPTION_UINT,
     GROUP_LIMITS,
     "64",
     FIELD(max_rooms_per_address),
     1,
     10000000,
     .help = "rooms created from one address (IPv6: one /64) that exist at once, counting rooms "
             "in their resume grace and reserved ones (TOO_MANY_ROOMS beyond)"},
    {"create-rate",
     "N",
     {"RELAY_CREATE_RATE"},
     OPTION_UINT,
     GROUP_LIMITS,
     "60",
     FIELD(rooms_created_per_minute),
     1,
     1000000,
     .help = "rooms created (create_room, POST /api/create-room) per address per minute "
             "(RATE_LIMITED, HTTP 429 beyond)"},
    {"max-connections-per-address",
     "N",
     {"RELAY_MAX_CONNECTIONS_PER_ADDRESS"},
     OPTION_UINT,
     GROUP_LIMITS,
     "256",
     FIELD(max_connections_per_address),
     1,
     10000000,
     .help = "open TCP connections from one address (IPv6: one /64); more are closed at once"},
    {"max-handshakes-per-address",
     "N",
     {"RELAY_MAX_HANDSHAKES_PER_ADDRESS"},
     OPTION_UINT,
     GROUP_LIMITS,
     "8",
     FIELD(max_handshakes_per_address),
     1,
     100000,
     .help = "connections from one address (IPv6: one /64) still in their HTTP/WebSocket "
             "handshake; more are closed at once, so silent sockets cannot hold up others"},
    {"ping-interval",
     "SECONDS",
     {"RELAY_PING_INTERVAL"},
     OPTION_SECONDS,
     GROUP_TIMEOUTS,
     "30",
     FIELD(ping_interval_seconds),
     0,
     ONE_WEEK_SECONDS,
     .help = "send a WebSocket ping after this much silence; 0 disables pings"},
    {"idle-timeout",
     "SECONDS",
     {"RELAY_IDLE_TIMEOUT"},
     OPTION_SECONDS,
     GROUP_TIMEOUTS,
     "90",
     FIELD(idle_timeout_seconds),
     1,
     ONE_WEEK_SECONDS,
     .help = "close a connection (1001) that sent nothing for this long"},
    {"handshake-timeout",
     "SECONDS",
     {"RELAY_HANDSHAKE_TIMEOUT"},
     OPTION_SECONDS,
     GROUP_TIMEOUTS,
     "5",
     FIELD(handshake_timeout_seconds),
     1,
     3600,
     .help = "drop a connection whose HTTP/WebSocket handshake is not done by then"},
    {"resume-grace",
     "SECONDS",
     {"RELAY_RESUME_GRACE"},
     OPTION_SECONDS,
     GROUP_TIMEOUTS,
     "30",
     FIELD(resume_grace_seconds),
     0,
     ONE_WEEK_SECONDS,
     .help = "how long a dropped member's place is kept for `resume`"},
    {"receiver-buffer",
     "BYTES",
     {"RELAY_RECEIVER_BUFFER"},
     OPTION_SIZE,
     GROUP_FLOW_CONTROL,
     "16M",
     FIELD(receiver_buffer_bytes),
     64 * KIB,
     64 * GIB,
     .help = "outbound bytes queued for one receiver before its senders are throttled"},
    {"flow-control",
     "throttle|drop",
     {"RELAY_FLOW_CONTROL"},
     OPTION_ENUM,
     GROUP_FLOW_CONTROL,
     "throttle",
     FIELD(flow_policy),
     .choices = flow_policy_choices,
     .help = "a receiver over its buffer throttles its senders, or is closed at once (4008)"},
    {"slow-receiver-timeout",
     "SECONDS",
     {"RELAY_SLOW_RECEIVER_TIMEOUT"},
     OPTION_SECONDS,
     GROUP_FLOW_CONTROL,
     "15",
     FIELD(slow_receiver_timeout_seconds),
     1,
     3600,
     .help = "close (4008) a receiver over its buffer that made no progress this long"},
    {"log-format",
     "text|json",
     {"RELAY_LOG_FORMAT"},
     OPTION_ENUM,
     GROUP_LOGGING,
     "text",
     FIELD(log_format),
     .choices = log_format_choices,
     .help = "one line per event on stderr, as key=value text or as JSON objects"},
    {"log-level",
     "debug|info|warn|error",
     {"RELAY_LOG_LEVEL"},
     OPTION_ENUM,
     GROUP_LOGGING,
     "info",
     FIELD(log_level),
     .choices = log_level_choices,
     .help = "the least severe events written"},
    {"allowed-origin",
     "ORIGIN",
     {"RELAY_ALLOWED_ORIGINS"},
     OPTION_LIST,
     GROUP_ACCESS,
     NULL,
     FIELD(allowed_origins),
     .help = "a browser origin (scheme://host[:port]) allowed to open WebSockets; repeat the "
             "flag or separate by commas; others get 403. Default: any origin"},
    {"enable-echo",
     NULL,
     {"RELAY_ENABLE_ECHO"},
     OPTION_FLAG,
     GROUP_TESTING,
     NULL,
     FIELD(enable_echo),
     .help = "serve /echo for the RFC 6455 conformance suite; never in production"},
    {"help", NULL, {NULL}, OPTION_HELP, GROUP_GENERAL, NULL, .help = "print this help and exit"},
    {"version",
     NULL,
     {NULL},
     OPTION_VERSION,
     GROUP_GENERAL,
     NULL,
     .help = "print the version and exit"},
};

#define OPTION_COUNT (sizeof options / sizeof options[0])
/* getopt_long returns this plus the table index for a long option, clear of short options. */
#define LONG_OPTION_BASE 256

static const struct option_spec *find_option(const char *name)
{
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (options[i].name && strcmp(options[i].name, name) == 0)
            return &options[i];
    return NULL;
}

/* ---- error messages -------------------------------------------------------------------- */

struct error_sink {
    char *text;
    size_t size;
};

static int fail(struct error_sink *error, const char *format, ...)
{
    if (error->text && error->size > 0) {
        va_list arguments;
        va_start(arguments, format);
        vsnprintf(error->text, error->size, format, arguments);
        va_end(arguments);
    }
    return -1;
}

/* Quotes a user's value for an error message: one line, printable, and not endless. */
static const char *quoted(const char *value, char *out, size_t size)
{
    size_t length = 0;
    out[length++] = '"';
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if (length + 8 >= size) {
            memcpy(out + length, "...", 3);
            length += 3;
            break;
        }
        if (*p < 0x20 || *p == 0x7F || *p == '"' || *p == '\\')
            length += (size_t)snprintf(out + length, size - length, "\\x%02x", *p);
        else
            out[length++] = (char)*p;
    }
    out[length++] = '"';
    out[length] = '\0';
    return out;
}

/* ---- parsing one value ----------------------------------------------------------------- */

/* Decimal digits only: strtoul would accept signs, spaces and "0x". */
static int parse_digits(const char *text, const char **end, uint64_t *value)
{
    uint64_t result = 0;
    const char *p = text;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (result > (UINT64_MAX - digit) / 10)
            return -1;
        result = result * 10 + digit;
    }
    *end = p;
    *value = result;
    return 0;
}

int config_parse_size(const char *text, uint64_t *bytes)
{
    const char *suffix;
    uint64_t number, multiplier = 1;
    if (!text || parse_digits(text, &suffix, &number) != 0)
        return -1;
    switch (*suffix) {
    case '\0':
        break;
    case 'K':
    case 'k':
        multiplier = KIB;
        break;
    case 'M':
    case 'm':
        multiplier = MIB;
        break;
    case 'G':
    case 'g':
        multiplier = GIB;
        break;
    default:
        return -1;
    }
    if (*suffix != '\0' && suffix[1] != '\0')
        return -1;
    if (number > UINT64_MAX / multiplier)
        return -1;
    *bytes = number * multiplier;
    return 0;
}

/* Prints a byte count the way a person would type it, e.g. "64M" rather than "67108864". */
static void format_size(uint64_t bytes, char *out, size_t size)
{
    if (bytes >= GIB && bytes % GIB == 0)
        snprintf(out, size, "%" PRIu64 "G", bytes / GIB);
    else if (bytes >= MIB && bytes % MIB == 0)
        snprintf(out, size, "%" PRIu64 "M", bytes / MIB);
    else if (bytes >= KIB && bytes % KIB == 0)
        snprintf(out, size, "%" PRIu64 "K", bytes / KIB);
    else
        snprintf(out, size, "%" PRIu64, bytes);
}

static void store_int(struct relay_config *config, const struct option_spec *spec, int value)
{
    memcpy((char *)config + spec->offset, &value, sizeof value);
}

static void store_unsigned(struct relay_config *config, const struct option_spec *spec,
                           unsigned value)
{
    memcpy((char *)config + spec->offset, &value, sizeof value);
}

static void store_u64(struct relay_config *config, const struct option_spec *spec, uint64_t value)
{
    memcpy((char *)config + spec->offset, &value, sizeof value);
}

static void store_bool(struct relay_config *config, const struct option_spec *spec, bool value)
{
    memcpy((char *)config + spec->offset, &value, sizeof value);
}

static int store_string(struct relay_config *config, const struct option_spec *spec,
                        const char *source, const char *value, struct error_sink *error)
{
    size_t length = strlen(value);
    if (length == 0)
        return fail(error, "%s: expected a value, got an empty string", source);
    if (length >= spec->field_size)
        return fail(error, "%s: too long (%zu bytes, at most %zu)", source, length,
                    spec->field_size - 1);
    memcpy((char *)config + spec->offset, value, length + 1);
    return 0;
}

/* A list option: the entries of `value` (separated by commas, spaces around them ignored)
 * stored as "a,b,c"; an empty entry or a control character is an error. */
static int store_list(struct relay_config *config, const struct option_spec *spec,
                      const char *source, const char *value, struct error_sink *error)
{
    char *field = (char *)config + spec->offset;
    size_t length = 0;
    for (const char *p = value;;) {
        p += strspn(p, " \t");
        size_t entry = strcspn(p, ",");
        size_t trimmed = entry;
        while (trimmed > 0 && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t'))
            trimmed--;
        if (trimmed == 0)
            return fail(error, "%s: expected a comma-separated list without empty entries", source);
        for (size_t i = 0; i < trimmed; i++)
            if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] == 0x7F)
                return fail(error, "%s: entries may not contain spaces or control characters",
                            source);
        if (length + (length ? 1 : 0) + trimmed >= spec->field_size)
            return fail(error, "%s: the list is too long (at most %zu bytes)", source,
                        spec->field_size - 1);
        if (length)
            field[length++] = ',';
        memcpy(field + length, p, trimmed);
        length += trimmed;
        field[length] = '\0';
        if (p[entry] == '\0')
            return 0;
        p += entry + 1;
    }
}

static int check_readable_file(const char *source, const char *path, struct error_sink *error)
{
    char shown[160];
    struct stat info;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(error, "%s: cannot read %s: %s", source, quoted(path, shown, sizeof shown),
                    strerror(errno));
    int is_regular = fstat(fd, &info) == 0 && S_ISREG(info.st_mode);
    close(fd);
    if (!is_regular)
        return fail(error, "%s: %s is not a regular file", source,
                    quoted(path, shown, sizeof shown));
    return 0;
}

/* Tokens travel in an HTTP header, a query string or a JSON field, so only visible ASCII is
 * allowed; this also rules out a stray space or carriage return that would make every client
 * fail. The messages never include the token. */
static int store_token(struct relay_config *config, const struct option_spec *spec,
                       const char *source, const char *token, size_t length,
                       struct error_sink *error)
{
    char *field = (char *)config + spec->offset;
    while (length > 0 && (token[length - 1] == '\n' || token[length - 1] == '\r'))
        length--;
    if (length == 0)
        return fail(error, "%s: the token is empty", source);
    if (length >= spec->field_size)
        return fail(error, "%s: the token is longer than %zu bytes", source, spec->field_size - 1);
    for (size_t i = 0; i < length; i++)
        if ((unsigned char)token[i] <= 0x20 || (unsigned char)token[i] >= 0x7F)
            return fail(error, "%s: the token may only contain printable ASCII without spaces",
                        source);
    memcpy(field, token, length);
    field[length] = '\0';
    return 0;
}

static int load_token_file(struct relay_config *config, const struct option_spec *spec,
                           const char *source, const char *path, struct error_sink *error)
{
    char shown[160];
    /* One byte more than a token may have (plus "\r\n"), to tell "too long" from "fits". */
    char contents[TOKEN_MAX_BYTES + 2];
    if (check_readable_file(source, path, error) != 0)
        return -1;
    FILE *file = fopen(path, "rb");
    if (!file)
        return fail(error, "%s: cannot read %s: %s", source, quoted(path, shown, sizeof shown),
                    strerror(errno));
    size_t length = fread(contents, 1, sizeof contents, file);
    int read_failed = ferror(file);
    fclose(file);
    if (read_failed)
        return fail(error, "%s: cannot read %s", source, quoted(path, shown, sizeof shown));
    return store_token(config, spec, source, contents, length, error);
}

static int parse_flag_value(const char *text, bool *value)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(text, yes[i]) == 0)
            return *value = true, 0;
        if (strcasecmp(text, no[i]) == 0)
            return *value = false, 0;
    }
    return -1;
}

/* Parses `value` for `spec` and stores it; `source` is "--name" or the environment variable,
 * so that the message names what the user actually typed. */
static int apply_value(struct relay_config *config, const struct option_spec *spec,
                       const char *source, const char *value, struct error_sink *error)
{
    char shown[160];
    uint64_t number;
    const char *end;
    switch (spec->kind) {
    case OPTION_ADDRESS: {
        unsigned char address[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET, value, address) != 1 && inet_pton(AF_INET6, value, address) != 1)
            return fail(error,
                        "%s: expected an IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1 or ::, "
                        "got %s",
                        source, quoted(value, shown, sizeof shown));
        return store_string(config, spec, source, value, error);
    }
    case OPTION_PORT:
    case OPTION_UINT:
    case OPTION_SECONDS:
        if (parse_digits(value, &end, &number) != 0 || *end != '\0' || number < spec->minimum ||
            number > spec->maximum)
            return fail(error, "%s: expected %s %" PRIu64 "..%" PRIu64 ", got %s", source,
                        spec->kind == OPTION_SECONDS ? "a number of seconds" : "an integer",
                        spec->minimum, spec->maximum, quoted(value, shown, sizeof shown));
        if (spec->kind == OPTION_PORT)
            store_int(config, spec, (int)number);
        else
            store_unsigned(config, spec, (unsigned)number);
        return 0;
    case OPTION_SIZE:
        if (config_parse_size(value, &number) != 0 || number < spec->minimum ||
            number > spec->maximum) {
            char minimum[32], maximum[32];
            format_size(spec->minimum, minimum, sizeof minimum);
            format_size(spec->maximum, maximum, sizeof maximum);
            return fail(error,
                        "%s: expected a size in bytes from %s to %s (suffixes K, M, G; e.g. "
                        "64M), got %s",
                        source, minimum, maximum, quoted(value, shown, sizeof shown));
        }
        store_u64(config, spec, number);
        return 0;
    case OPTION_ENUM:
        for (const struct enum_choice *choice = spec->choices; choice->name; choice++) {
            if (strcmp(choice->name, value) == 0) {
                store_int(config, spec, choice->value);
                return 0;
            }
        }
        return fail(error, "%s: expected one of %s, got %s", source, spec->argument,
                    quoted(value, shown, sizeof shown));
    case OPTION_FLAG: {
        bool enabled;
        if (parse_flag_value(value, &enabled) != 0)
            return fail(error, "%s: expected 1 or 0 (or true/false, yes/no, on/off), got %s",
                        source, quoted(value, shown, sizeof shown));
        store_bool(config, spec, enabled);
        return 0;
    }
    case OPTION_FILE:
        if (*value != '\0' && check_readable_file(source, value, error) != 0)
            return -1;
        return store_string(config, spec, source, value, error);
    case OPTION_PATH:
        return store_string(config, spec, source, value, error);
    case OPTION_LIST:
        return store_list(config, spec, source, value, error);
    case OPTION_TOKEN_FILE:
        if (*value == '\0')
            return fail(error, "%s: expected a file name, got an empty string", source);
        return load_token_file(config, spec, source, value, error);
    case OPTION_TOKEN:
        return store_token(config, spec, source, value, strlen(value), error);
    case OPTION_HELP:
    case OPTION_VERSION:
        break;
    }
    return 0;
}

/* ---- public interface ------------------------------------------------------------------ */

void config_defaults(struct relay_config *config)
{
    memset(config, 0, sizeof *config);
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        if (!options[i].default_text)
            continue;
        /* The defaults are typed like user input so that --help shows exactly what is used;
         * a default that does not parse is a bug in the table, caught by the unit tests. */
        char ignored[8];
        struct error_sink error = {ignored, sizeof ignored};
        apply_value(config, &options[i], options[i].name, options[i].default_text, &error);
    }
}

/* Where a setting came from: the flag's value if it was given, else the first environment
 * variable that is set, else nothing. */
struct setting {
    const char *value;
    char source[64];
};

static bool find_setting(const struct option_spec *spec, const char *flag_value,
                         struct setting *setting)
{
    if (flag_value) {
        setting->value = flag_value;
        snprintf(setting->source, sizeof setting->source, "--%s", spec->name);
        return true;
    }
    for (size_t e = 0; e < 2 && spec->env[e]; e++) {
        const char *value = getenv(spec->env[e]);
        if (value) {
            setting->value = value;
            snprintf(setting->source, sizeof setting->source, "%s", spec->env[e]);
            return true;
        }
    }
    return false;
}

/* The option part of "--name=value" or "--name", quoted for a message: the value is left out
 * because a mistyped option may be followed by a secret. */
static const char *typed_name(const char *argument, char *out, size_t size)
{
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(argument, "="), argument);
    return quoted(name, out, size);
}

/* getopt_long accepts any unique prefix of a long option ("--token" for --token-file), which
 * would let a value meant for another option, or a future option's name, land somewhere
 * unexpected; every option must be spelled out. */
static bool spelled_out(const char *typed, const char *name)
{
    size_t length = strcspn(typed + 2, "=");
    return strlen(name) == length && strncmp(typed + 2, name, length) == 0;
}

/* For a token given in the environment (OPTION_TOKEN), the option naming a file with the same
 * token; NULL for every other option. */
static const struct option_spec *token_file_of(const struct option_spec *spec)
{
    if (spec->kind != OPTION_TOKEN)
        return NULL;
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (options[i].kind == OPTION_TOKEN_FILE && options[i].offset == spec->offset)
            return &options[i];
    return NULL;
}

/* A repeated list flag's values so far plus `more`, joined by a comma. The joined text lives
 * in a static buffer (one list option, one config_load at a time); past its size the rest is
 * cut, which store_list then reports as a too-long list. */
static const char *join_values(const char *so_far, const char *more)
{
    static char joined[8192];
    size_t length = strlen(so_far);
    if (so_far != joined) {
        length = length < sizeof(joined) - 1 ? length : sizeof(joined) - 1;
        memcpy(joined, so_far, length);
    }
    size_t room = sizeof(joined) - 1 - length;
    size_t extra = strlen(more) + 1;
    if (extra > room)
        extra = room;
    if (extra > 0) {
        joined[length] = ',';
        memcpy(joined + length + 1, more, extra - 1);
    }
    joined[length + extra] = '\0';
    return joined;
}

/* Reads argv with getopt_long, remembering the last value of each flag; nothing is applied yet
 * so that a flag can override an environment variable without that variable being parsed. */
static int read_arguments(int argc, char **argv, const char **flag_values, bool *help,
                          bool *version, struct error_sink *error)
{
    struct option long_options[OPTION_COUNT + 1];
    size_t count = 0;
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        if (!options[i].name)
            continue;
        long_options[count++] =
            (struct option){options[i].name, options[i].argument ? required_argument : no_argument,
                            NULL, LONG_OPTION_BASE + (int)i};
    }
    long_options[count] = (struct option){NULL, 0, NULL, 0};

    optind = 0; /* glibc: start over, so config_load can be called more than once */
    opterr = 0; /* our own one-line messages instead of getopt's */
    for (;;) {
        int found = getopt_long(argc, argv, ":hV", long_options, NULL);
        if (found == -1)
            break;
        const char *argument = argv[optind - 1];
        char shown[160];
        if (found == 'h') {
            *help = true;
        } else if (found == 'V') {
            *version = true;
        } else if (found == ':' || found == '?') {
            /* optopt holds the table index of a known long option, a short option's letter,
             * or 0 for a long option getopt did not recognise. */
            const struct option_spec *spec =
                optopt >= LONG_OPTION_BASE ? &options[optopt - LONG_OPTION_BASE] : NULL;
            if (found == ':' && spec)
                return fail(error, "--%s: expected a value after it", spec->name);
            if (found == ':')
                return fail(error, "-%c: expected a value after it", optopt);
            if (spec)
                return fail(error, "--%s: takes no value, got %s", spec->name,
                            quoted(argument, shown, sizeof shown));
            if (optopt)
                return fail(error, "unknown option \"-%c\" (see --help)", optopt);
            return fail(error, "unknown option %s (see --help)",
                        typed_name(argument, shown, sizeof shown));
        } else {
            const struct option_spec *spec = &options[found - LONG_OPTION_BASE];
            /* With "--name value" getopt has consumed two elements, the name first. */
            const char *typed = optarg && optarg == argument ? argv[optind - 2] : argument;
            if (!spelled_out(typed, spec->name))
                return fail(error, "unknown option %s (see --help; did you mean --%s?)",
                            typed_name(typed, shown, sizeof shown), spec->name);
            if (spec->kind == OPTION_HELP)
                *help = true;
            else if (spec->kind == OPTION_VERSION)
                *version = true;
            else if (spec->kind == OPTION_LIST && flag_values[found - LONG_OPTION_BASE])
                flag_values[found - LONG_OPTION_BASE] =
                    join_values(flag_values[found - LONG_OPTION_BASE], optarg);
            else
                flag_values[found - LONG_OPTION_BASE] = optarg ? optarg : "1";
        }
    }
    if (optind < argc) {
        char shown[160];
        return fail(error, "unexpected argument %s (every setting is a --option; see --help)",
                    quoted(argv[optind], shown, sizeof shown));
    }
    return 0;
}

int config_load(struct relay_config *config, int argc, char **argv, char *error_text,
                size_t error_size)
{
    struct error_sink error = {error_text, error_size};
    const char *flag_values[OPTION_COUNT] = {NULL};
    bool help = false, version = false;
    if (error_text && error_size > 0)
        error_text[0] = '\0';

    if (read_arguments(argc, argv, flag_values, &help, &version, &error) != 0)
        return -1;
    if (help) {
        config_print_help(argc > 0 ? argv[0] : "relay_server", stdout);
        return 1;
    }
    if (version) {
        printf("relay_server %s\n", RELAY_VERSION);
        return 1;
    }

    /* Two ways to give a token are fine, two at once is a mistake the user should hear of;
     * a token file flag overrides both environment variables like any flag. */
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const struct option_spec *file = token_file_of(&options[i]);
        if (file && !flag_values[file - options] && getenv(options[i].env[0]) &&
            getenv(file->env[0]))
            return fail(&error, "%s and %s are both set; set only one", options[i].env[0],
                        file->env[0]);
    }

    struct setting settings[OPTION_COUNT];
    bool present[OPTION_COUNT];
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const struct option_spec *spec = &options[i];
        const char *flag_value = flag_values[i];
        /* A token's environment variable gives way to its file flag rather than conflicting. */
        const struct option_spec *file = token_file_of(spec);
        bool overridden = file && flag_values[file - options];
        present[i] = !overridden && find_setting(spec, flag_value, &settings[i]);
        if (present[i] &&
            apply_value(config, spec, settings[i].source, settings[i].value, &error) != 0)
            return -1;
    }
    config->access_token_set = config->access_token[0] != '\0';
    config->lan_mode = config->lan_host_token[0] != '\0';

    const struct option_spec *cert = find_option("tls-cert"), *key = find_option("tls-key");
    bool has_cert = present[cert - options], has_key = present[key - options];
    if (has_cert != has_key) {
        const struct setting *given = &settings[(has_cert ? cert : key) - options];
        return fail(&error, "%s needs %s: give both a certificate and its key, or neither",
                    given->source,
                    has_cert ? "--tls-key (or RELAY_TLS_KEY)" : "--tls-cert (or RELAY_TLS_CERT)");
    }
    return 0;
}

bool config_origin_allowed(const struct relay_config *config, const char *origin)
{
    const char *list = config->allowed_origins;
    if (!list[0] || !origin)
        return true;
    size_t length = strlen(origin);
    for (const char *p = list; *p;) {
        size_t entry = strcspn(p, ",");
        if (entry == length && strncasecmp(p, origin, length) == 0)
            return true;
        p += entry + (p[entry] == ',');
    }
    return false;
}

/* ---- help ------------------------------------------------------------------------------ */

static void describe_default(const struct option_spec *spec, char *out, size_t size)
{
    if (spec->kind == OPTION_SIZE) {
        uint64_t bytes = 0;
        config_parse_size(spec->default_text, &bytes);
        char human[32];
        format_size(bytes, human, sizeof human);
        snprintf(out, size, "default %s", human);
    } else if (spec->default_text) {
        snprintf(out, size, "default %s", spec->default_text);
    } else if (spec->kind == OPTION_FLAG) {
        snprintf(out, size, "default off");
    } else {
        snprintf(out, size, "default none");
    }
}

/* Writes `text` indented, breaking between words so that no line passes HELP_WIDTH. */
#define HELP_WIDTH 94
#define HELP_INDENT 6
static void print_wrapped(FILE *out, const char *text)
{
    int column = fprintf(out, "%*s", HELP_INDENT, "");
    while (*text) {
        size_t word = strcspn(text, " ");
        if (column > HELP_INDENT && column + 1 + (int)word > HELP_WIDTH)
            column = fprintf(out, "\n%*s", HELP_INDENT, "") - 1;
        else if (column > HELP_INDENT)
            column += fprintf(out, " ");
        column += (int)fwrite(text, 1, word, out);
        text += word;
        text += strspn(text, " ");
    }
    fputc('\n', out);
}

void config_print_help(const char *program, void *out_stream)
{
    FILE *out = out_stream;
    fprintf(out,
            "Usage: %s [OPTION]...\n"
            "relay_server %s: a WebSocket relay for rooms of people exchanging model weights\n"
            "(docs/protocol.md). Every option can also be set by the environment variable\n"
            "shown; a flag on the command line wins over the environment. Sizes are bytes and\n"
            "accept the suffixes K, M and G (powers of 1024).\n",
            program, RELAY_VERSION);
    for (int group = 0; group < GROUP_COUNT; group++) {
        fprintf(out, "\n%s:\n", group_titles[group]);
        for (size_t i = 0; i < OPTION_COUNT; i++) {
            const struct option_spec *spec = &options[i];
            if ((int)spec->group != group)
                continue;
            char usage[80], where[160], fallback[48];
            if (spec->name)
                snprintf(usage, sizeof usage, "--%s%s%s", spec->name, spec->argument ? " " : "",
                         spec->argument ? spec->argument : "");
            else
                snprintf(usage, sizeof usage, "%s=%s", spec->env[0], spec->argument);
            size_t length = 0;
            for (size_t e = 0; e < 2 && spec->env[e]; e++)
                length += (size_t)snprintf(where + length, sizeof where - length, "%s%s%s",
                                           e ? ", else " : "env ", spec->env[e],
                                           spec->kind == OPTION_FLAG ? "=1" : "");
            if (!spec->name)
                length = (size_t)snprintf(where, sizeof where, "environment only");
            if (spec->kind == OPTION_HELP)
                snprintf(where, sizeof where, "-h");
            else if (spec->kind == OPTION_VERSION)
                snprintf(where, sizeof where, "-V");
            else {
                describe_default(spec, fallback, sizeof fallback);
                snprintf(where + length, sizeof where - length, "; %s", fallback);
            }
            fprintf(out, "  %-34s %s\n", usage, where);
            print_wrapped(out, spec->help);
        }
    }
}
