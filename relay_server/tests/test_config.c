/* test_config.c — the relay's settings: documented defaults, every option by flag and by
 * environment variable, precedence, and a clear one-line error for every kind of bad value.
 * Expected values come from config.h's comments and the issue, not from config.c's table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "unit.h"
#include "version.h"

#define ERROR_SIZE 512
#define MIB (1024ULL * 1024ULL)
#define GIB (1024ULL * MIB)

/* Every environment variable the relay reads; cleared before each test so that the
 * developer's own environment cannot change a result. */
static const char *const relay_variables[] = {
    "RELAY_LISTEN",
    "RELAY_PORT",
    "PORT",
    "RELAY_TLS_CERT",
    "RELAY_TLS_KEY",
    "RELAY_TOKEN",
    "RELAY_TOKEN_FILE",
    "RELAY_SECRET_FILE",
    "RELAY_MAX_MESSAGE_SIZE",
    "RELAY_MAX_TEXT_SIZE",
    "RELAY_MAX_ROOM_MEMBERS",
    "RELAY_MAX_ROOMS",
    "RELAY_MAX_CONNECTIONS",
    "RELAY_JOIN_RATE",
    "RELAY_PING_INTERVAL",
    "RELAY_IDLE_TIMEOUT",
    "RELAY_HANDSHAKE_TIMEOUT",
    "RELAY_RESUME_GRACE",
    "RELAY_RECEIVER_BUFFER",
    "RELAY_FLOW_CONTROL",
    "RELAY_SLOW_RECEIVER_TIMEOUT",
    "RELAY_LOG_FORMAT",
    "RELAY_LOG_LEVEL",
    "RELAY_ENABLE_ECHO",
};
#define VARIABLE_COUNT (sizeof relay_variables / sizeof relay_variables[0])

/* A private directory for the certificate, key and token files the tests write. */
static char scratch[64];

static const char *scratch_path(const char *name)
{
    static char paths[8][128];
    static unsigned next;
    char *path = paths[next++ % 8];
    snprintf(path, sizeof paths[0], "%s/%s", scratch, name);
    return path;
}

static const char *write_file(const char *name, const char *contents, size_t length)
{
    const char *path = scratch_path(name);
    FILE *file = fopen(path, "wb");
    assert_non_null(file);
    assert_int_equal(fwrite(contents, 1, length, file), length);
    assert_int_equal(fclose(file), 0);
    return path;
}

static int make_scratch(void **state)
{
    snprintf(scratch, sizeof scratch, "/tmp/relay-config-test-XXXXXX");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state)
{
    static const char *const names[] = {"cert.pem", "key.pem", "token", "token2", "secret"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unlink(scratch_path(names[i]));
    return rmdir(scratch);
}

static int clear_environment(void **state)
{
    for (size_t i = 0; i < VARIABLE_COUNT; i++)
        unsetenv(relay_variables[i]);
    return 0;
}

/* config_defaults then config_load with "relay_server" followed by `args` (NULL-terminated). */
static int load_args(struct relay_config *config, char *error, const char *const *args)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "relay_server";
    for (; *args; args++) {
        assert_true(argc < 63);
        argv[argc++] = (char *)*args;
    }
    argv[argc] = NULL;
    config_defaults(config);
    memset(error, 0, ERROR_SIZE);
    return config_load(config, argc, argv, error, ERROR_SIZE);
}
#define LOAD(config, error, ...)                                                                   \
    load_args((config), (error), (const char *const[]){__VA_ARGS__, NULL})

static void assert_documented_defaults(const struct relay_config *config)
{
    assert_string_equal(config->listen_address, "0.0.0.0");
    assert_int_equal(config->port, 8787);
    assert_string_equal(config->tls_cert_path, "");
    assert_string_equal(config->tls_key_path, "");
    assert_int_equal(config->max_message_size, 64 * MIB);
    assert_int_equal(config->max_text_size, 1 * MIB);
    assert_int_equal(config->max_room_members, 64);
    assert_int_equal(config->max_rooms, 10000);
    assert_int_equal(config->max_connections, 10000);
    assert_int_equal(config->join_attempts_per_minute, 30);
    assert_int_equal(config->failed_joins_per_minute, 3000);
    assert_int_equal(config->max_rooms_per_address, 64);
    assert_int_equal(config->rooms_created_per_minute, 60);
    assert_int_equal(config->max_connections_per_address, 256);
    assert_int_equal(config->max_handshakes_per_address, 8);
    assert_false(config->access_token_set);
    assert_string_equal(config->access_token, "");
    assert_string_equal(config->secret_file, "");
    assert_int_equal(config->ping_interval_seconds, 30);
    assert_int_equal(config->idle_timeout_seconds, 90);
    assert_int_equal(config->handshake_timeout_seconds, 5);
    assert_int_equal(config->resume_grace_seconds, 30);
    assert_int_equal(config->receiver_buffer_bytes, 16 * MIB);
    assert_int_equal(config->flow_policy, FLOW_THROTTLE_SENDER);
    assert_int_equal(config->slow_receiver_timeout_seconds, 15);
    assert_int_equal(config->log_format, LOG_FORMAT_TEXT);
    assert_int_equal(config->log_level, LOG_LEVEL_INFO);
    assert_false(config->enable_echo);
}

static void test_defaults_are_the_documented_ones(void **state)
{
    struct relay_config config;
    memset(&config, 0x5A, sizeof config); /* leftovers must not survive config_defaults */
    config_defaults(&config);
    assert_documented_defaults(&config);
}

static void test_no_arguments_and_no_environment_keep_the_defaults(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), 0);
    assert_string_equal(error, "");
    assert_documented_defaults(&config);
}

/* Non-default values for every option, checked field by field; used by the flag and the
 * environment variants so that both paths cover every option. */
static void assert_every_option_changed(const struct relay_config *config)
{
    assert_string_equal(config->listen_address, "::1");
    assert_int_equal(config->port, 9000);
    assert_string_equal(config->tls_cert_path, scratch_path("cert.pem"));
    assert_string_equal(config->tls_key_path, scratch_path("key.pem"));
    assert_int_equal(config->max_message_size, 2 * GIB);
    assert_int_equal(config->max_text_size, 512 * 1024);
    assert_int_equal(config->max_room_members, 3);
    assert_int_equal(config->max_rooms, 200);
    assert_int_equal(config->max_connections, 19000);
    assert_int_equal(config->join_attempts_per_minute, 1000);
    assert_true(config->access_token_set);
    assert_string_equal(config->access_token, "from-a-file");
    assert_string_equal(config->secret_file, scratch_path("secret"));
    assert_int_equal(config->ping_interval_seconds, 0);
    assert_int_equal(config->idle_timeout_seconds, 5);
    assert_int_equal(config->handshake_timeout_seconds, 2);
    assert_int_equal(config->resume_grace_seconds, 0);
    assert_int_equal(config->receiver_buffer_bytes, 4096 * 1024);
    assert_int_equal(config->flow_policy, FLOW_DROP_RECEIVER);
    assert_int_equal(config->slow_receiver_timeout_seconds, 1);
    assert_int_equal(config->log_format, LOG_FORMAT_JSON);
    assert_int_equal(config->log_level, LOG_LEVEL_DEBUG);
    assert_true(config->enable_echo);
}

static void write_tls_and_token_files(void)
{
    write_file("cert.pem", "not parsed here\n", 16);
    write_file("key.pem", "not parsed here\n", 16);
    write_file("token", "from-a-file\n", 12);
}

static void test_every_option_by_flag(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE], cert[128], key[128], token[128], secret[128];
    write_tls_and_token_files();
    snprintf(cert, sizeof cert, "%s", scratch_path("cert.pem"));
    snprintf(key, sizeof key, "%s", scratch_path("key.pem"));
    snprintf(token, sizeof token, "%s", scratch_path("token"));
    snprintf(secret, sizeof secret, "%s", scratch_path("secret")); /* need not exist */
    int result =
        LOAD(&config, error, "--listen", "::1", "--port", "9000", "--tls-cert", cert, "--tls-key",
             key, "--max-message-size", "2G", "--max-text-size", "512K", "--max-room-members", "3",
             "--max-rooms", "200", "--max-connections", "19000", "--join-rate", "1000",
             "--token-file", token, "--secret-file", secret, "--ping-interval", "0",
             "--idle-timeout", "5", "--handshake-timeout", "2", "--resume-grace", "0",
             "--receiver-buffer", "4M", "--flow-control", "drop", "--slow-receiver-timeout", "1",
             "--log-format", "json", "--log-level", "debug", "--enable-echo");
    assert_int_equal(result, 0);
    assert_string_equal(error, "");
    assert_every_option_changed(&config);
}

static void test_every_option_by_flag_with_equals_sign(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    assert_int_equal(LOAD(&config, error, "--port=1234", "--max-message-size=1k",
                          "--log-level=warn", "--flow-control=throttle"),
                     0);
    assert_int_equal(config.port, 1234);
    assert_int_equal(config.max_message_size, 1024);
    assert_int_equal(config.log_level, LOG_LEVEL_WARN);
    assert_int_equal(config.flow_policy, FLOW_THROTTLE_SENDER);
}

static void test_every_option_by_environment(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    write_tls_and_token_files();
    setenv("RELAY_LISTEN", "::1", 1);
    setenv("RELAY_PORT", "9000", 1);
    setenv("RELAY_TLS_CERT", scratch_path("cert.pem"), 1);
    setenv("RELAY_TLS_KEY", scratch_path("key.pem"), 1);
    setenv("RELAY_MAX_MESSAGE_SIZE", "2G", 1);
    setenv("RELAY_MAX_TEXT_SIZE", "512K", 1);
    setenv("RELAY_MAX_ROOM_MEMBERS", "3", 1);
    setenv("RELAY_MAX_ROOMS", "200", 1);
    setenv("RELAY_MAX_CONNECTIONS", "19000", 1);
    setenv("RELAY_JOIN_RATE", "1000", 1);
    setenv("RELAY_TOKEN_FILE", scratch_path("token"), 1);
    setenv("RELAY_SECRET_FILE", scratch_path("secret"), 1);
    setenv("RELAY_PING_INTERVAL", "0", 1);
    setenv("RELAY_IDLE_TIMEOUT", "5", 1);
    setenv("RELAY_HANDSHAKE_TIMEOUT", "2", 1);
    setenv("RELAY_RESUME_GRACE", "0", 1);
    setenv("RELAY_RECEIVER_BUFFER", "4M", 1);
    setenv("RELAY_FLOW_CONTROL", "drop", 1);
    setenv("RELAY_SLOW_RECEIVER_TIMEOUT", "1", 1);
    setenv("RELAY_LOG_FORMAT", "json", 1);
    setenv("RELAY_LOG_LEVEL", "debug", 1);
    setenv("RELAY_ENABLE_ECHO", "1", 1);
    assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), 0);
    assert_string_equal(error, "");
    assert_every_option_changed(&config);
}

static void test_token_from_environment(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    setenv("RELAY_TOKEN", "s3cret-Token_1", 1);
    assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), 0);
    assert_true(config.access_token_set);
    assert_string_equal(config.access_token, "s3cret-Token_1");
}

static void test_enable_echo_environment_spellings(void **state)
{
    static const char *const on[] = {"1", "true", "TRUE", "yes", "on"};
    static const char *const off[] = {"0", "false", "no", "Off"};
    struct relay_config config;
    char error[ERROR_SIZE];
    for (size_t i = 0; i < sizeof on / sizeof on[0]; i++) {
        setenv("RELAY_ENABLE_ECHO", on[i], 1);
        assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), 0);
        assert_true(config.enable_echo);
    }
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        setenv("RELAY_ENABLE_ECHO", off[i], 1);
        assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), 0);
        assert_false(config.enable_echo);
    }
}

static void test_flag_wins_over_environment(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    setenv("RELAY_PORT", "1000", 1);
    setenv("RELAY_LOG_FORMAT", "json", 1);
    assert_int_equal(LOAD(&config, error, "--port", "2000"), 0);
    assert_int_equal(config.port, 2000);
    assert_int_equal(config.log_format, LOG_FORMAT_JSON); /* no flag: environment applies */
}

static void test_flag_wins_without_parsing_a_bad_environment_value(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    setenv("RELAY_PORT", "not-a-port", 1);
    assert_int_equal(LOAD(&config, error, "--port", "0"), 0);
    assert_int_equal(config.port, 0);
}

static void test_relay_port_wins_over_port(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    setenv("PORT", "5000", 1);
    assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), 0);
    assert_int_equal(config.port, 5000);
    setenv("RELAY_PORT", "6000", 1);
    assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), 0);
    assert_int_equal(config.port, 6000);
    assert_int_equal(LOAD(&config, error, "--port", "7000"), 0);
    assert_int_equal(config.port, 7000);
}

static void test_last_repeated_flag_wins(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    assert_int_equal(LOAD(&config, error, "--port", "1", "--port", "2"), 0);
    assert_int_equal(config.port, 2);
}

static void test_token_file_flag_overrides_token_environment(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    const char *path = write_file("token", "from-the-file\n", 14);
    setenv("RELAY_TOKEN", "from-the-environment", 1);
    assert_int_equal(LOAD(&config, error, "--token-file", path), 0);
    assert_string_equal(config.access_token, "from-the-file");
}

static void test_token_file_forms(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    const char *path = write_file("token", "crlf\r\n", 6);
    assert_int_equal(LOAD(&config, error, "--token-file", path), 0);
    assert_string_equal(config.access_token, "crlf");
    path = write_file("token", "no-newline", 10);
    assert_int_equal(LOAD(&config, error, "--token-file", path), 0);
    assert_string_equal(config.access_token, "no-newline");

    char longest[256];
    memset(longest, 'a', 255);
    longest[255] = '\n';
    path = write_file("token", longest, 256);
    assert_int_equal(LOAD(&config, error, "--token-file", path), 0);
    assert_int_equal(strlen(config.access_token), 255);
}

/* One bad input: the optional environment variable, the arguments, and what the single error
 * line must start with and contain. */
struct bad_input {
    const char *variable, *value;
    const char *args[4];
    const char *starts_with, *contains;
};

static const struct bad_input bad_inputs[] = {
    {NULL, NULL, {"--port", "abc"}, "--port: expected an integer 0..65535, got \"abc\"", ""},
    {NULL, NULL, {"--port", "-1"}, "--port:", "got \"-1\""},
    {NULL, NULL, {"--port", "65536"}, "--port:", "0..65535"},
    {NULL, NULL, {"--port", ""}, "--port:", "got \"\""},
    {NULL, NULL, {"--port", " 80"}, "--port:", "0..65535"},
    {NULL, NULL, {"--port", "80 "}, "--port:", "0..65535"},
    {NULL, NULL, {"--port", "0x50"}, "--port:", "0..65535"},
    {NULL, NULL, {"--port", "+80"}, "--port:", "0..65535"},
    {NULL, NULL, {"--port", "99999999999999999999999"}, "--port:", "0..65535"},
    {"RELAY_PORT", "abc", {NULL}, "RELAY_PORT: expected an integer 0..65535", ""},
    {"PORT", "http", {NULL}, "PORT: expected an integer 0..65535", ""},
    {NULL, NULL, {"--max-room-members", "0"}, "--max-room-members:", "an integer 1.."},
    {NULL, NULL, {"--max-rooms", "4294967296"}, "--max-rooms:", "an integer 1.."},
    {NULL, NULL, {"--max-connections", "-5"}, "--max-connections:", "got \"-5\""},
    {NULL, NULL, {"--join-rate", "3.5"}, "--join-rate:", "got \"3.5\""},
    {NULL, NULL, {"--idle-timeout", "0"}, "--idle-timeout:", "seconds"},
    {NULL, NULL, {"--ping-interval", "10s"}, "--ping-interval:", "seconds"},
    {"RELAY_HANDSHAKE_TIMEOUT", "soon", {NULL}, "RELAY_HANDSHAKE_TIMEOUT:", "seconds"},
    {NULL, NULL, {"--max-message-size", "12Q"}, "--max-message-size:", "got \"12Q\""},
    {NULL, NULL, {"--max-message-size", "-1"}, "--max-message-size:", "size in bytes"},
    {NULL, NULL, {"--max-message-size", ""}, "--max-message-size:", "size in bytes"},
    {NULL, NULL, {"--max-message-size", "99999999999G"}, "--max-message-size:", "size in bytes"},
    {NULL, NULL, {"--max-message-size", "0"}, "--max-message-size:", "size in bytes"},
    {NULL, NULL, {"--max-message-size", "1.5M"}, "--max-message-size:", "size in bytes"},
    {"RELAY_RECEIVER_BUFFER", "lots", {NULL}, "RELAY_RECEIVER_BUFFER:", "size in bytes"},
    {NULL, NULL, {"--log-format", "xml"}, "--log-format:", "text|json, got \"xml\""},
    {NULL, NULL, {"--log-level", "verbose"}, "--log-level:", "debug|info|warn|error"},
    {NULL, NULL, {"--flow-control", "fast"}, "--flow-control:", "throttle|drop"},
    {"RELAY_LOG_FORMAT", "XML", {NULL}, "RELAY_LOG_FORMAT:", "text|json"},
    {"RELAY_ENABLE_ECHO", "maybe", {NULL}, "RELAY_ENABLE_ECHO:", "got \"maybe\""},
    {NULL, NULL, {"--listen", "example.org"}, "--listen:", "IPv4 or IPv6 address"},
    {NULL, NULL, {"--listen", ""}, "--listen:", "IPv4 or IPv6 address"},
    {"RELAY_LISTEN", "256.0.0.1", {NULL}, "RELAY_LISTEN:", "IPv4 or IPv6 address"},
    {NULL, NULL, {"--tls-cert", "/nonexistent/cert.pem"}, "--tls-cert:", "No such file"},
    {"RELAY_TLS_KEY", "/nonexistent/key.pem", {NULL}, "RELAY_TLS_KEY:", "No such file"},
    {NULL, NULL, {"--token-file", "/nonexistent/token"}, "--token-file:", "No such file"},
    {NULL, NULL, {"--token-file", ""}, "--token-file:", "empty"},
    {"RELAY_TOKEN", "", {NULL}, "RELAY_TOKEN:", "empty"},
    {"RELAY_TOKEN", "has space", {NULL}, "RELAY_TOKEN:", "printable ASCII"},
    {NULL, NULL, {"--bogus"}, "unknown option \"--bogus\"", "--help"},
    {NULL, NULL, {"-x"}, "unknown option \"-x\"", "--help"},
    {NULL, NULL, {"--max", "5"}, "unknown option \"--max\"", "--help"},
    {NULL, NULL, {"--join-r", "5"}, "unknown option \"--join-r\"", "--join-rate?"},
    {NULL, NULL, {"--port"}, "--port:", "expected a value"},
    {NULL, NULL, {"--enable-echo=yes"}, "--enable-echo:", "takes no value"},
    {NULL, NULL, {"8787"}, "unexpected argument \"8787\"", "--option"},
    {NULL, NULL, {"--token", "abc"}, "unknown option \"--token\"", "--help"},
    {NULL, NULL, {"--token=abc"}, "unknown option \"--token\"", "--help"},
    {NULL, NULL, {"--port", "a\nb"}, "--port:", "got \"a\\x0ab\""},
};

static void test_bad_inputs_give_one_line_naming_the_option(void **state)
{
    for (size_t i = 0; i < sizeof bad_inputs / sizeof bad_inputs[0]; i++) {
        const struct bad_input *bad = &bad_inputs[i];
        struct relay_config config;
        char error[ERROR_SIZE];
        clear_environment(NULL);
        if (bad->variable)
            setenv(bad->variable, bad->value, 1);
        int result = load_args(&config, error, bad->args);
        if (result != -1 || strncmp(error, bad->starts_with, strlen(bad->starts_with)) != 0 ||
            !strstr(error, bad->contains) || strchr(error, '\n'))
            fail_msg("bad input %zu (%s %s): returned %d with error '%s'", i,
                     bad->variable ? bad->variable : "", bad->args[0] ? bad->args[0] : "", result,
                     error);
    }
}

static void test_tls_needs_both_files(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE], cert[128], key[128];
    write_tls_and_token_files();
    snprintf(cert, sizeof cert, "%s", scratch_path("cert.pem"));
    snprintf(key, sizeof key, "%s", scratch_path("key.pem"));

    assert_int_equal(LOAD(&config, error, "--tls-cert", cert), -1);
    assert_non_null(strstr(error, "--tls-cert needs --tls-key"));
    assert_int_equal(LOAD(&config, error, "--tls-key", key), -1);
    assert_non_null(strstr(error, "--tls-key needs --tls-cert"));
    setenv("RELAY_TLS_KEY", key, 1);
    assert_int_equal(LOAD(&config, error, "--tls-cert", cert), 0); /* one by env, one by flag */
    assert_string_equal(config.tls_cert_path, cert);
    assert_string_equal(config.tls_key_path, key);
    unsetenv("RELAY_TLS_KEY");
    setenv("RELAY_TLS_CERT", cert, 1);
    assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), -1);
    assert_non_null(strstr(error, "RELAY_TLS_CERT needs --tls-key"));
}

static void test_tls_file_that_is_a_directory(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    write_tls_and_token_files();
    assert_int_equal(
        LOAD(&config, error, "--tls-cert", scratch, "--tls-key", scratch_path("key.pem")), -1);
    assert_non_null(strstr(error, "--tls-cert:"));
    assert_non_null(strstr(error, "not a regular file"));
}

static void test_token_file_that_is_a_directory(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    assert_int_equal(LOAD(&config, error, "--token-file", scratch), -1);
    assert_non_null(strstr(error, "--token-file:"));
    assert_non_null(strstr(error, "not a regular file"));
}

/* "--token SECRET" must not be taken as an abbreviation of --token-file, nor echo SECRET. */
static void test_mistyped_token_option_does_not_echo_its_value(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    assert_int_equal(LOAD(&config, error, "--token", "hunter2"), -1);
    assert_null(strstr(error, "hunter2"));
    assert_int_equal(LOAD(&config, error, "--token=hunter2"), -1);
    assert_null(strstr(error, "hunter2"));
    assert_int_equal(LOAD(&config, error, "--tok=hunter2"), -1);
    assert_null(strstr(error, "hunter2"));
    assert_false(config.access_token_set);
}

/* Token errors must never echo the token, since it may be a real secret with a typo. */
static void test_bad_token_files_without_showing_the_token(void **state)
{
    static const struct {
        const char *contents;
        const char *problem;
    } cases[] = {
        {"", "empty"},
        {"\n", "empty"},
        {"\r\n\n", "empty"},
        {"two words\n", "printable ASCII"},
        {"tab\there\n", "printable ASCII"},
        {"inner\nnewline\n", "printable ASCII"},
        {"caf\xc3\xa9\n", "printable ASCII"},
    };
    struct relay_config config;
    char error[ERROR_SIZE];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_file("token", cases[i].contents, strlen(cases[i].contents));
        assert_int_equal(LOAD(&config, error, "--token-file", path), -1);
        if (strncmp(error, "--token-file:", 13) != 0 || !strstr(error, cases[i].problem))
            fail_msg("token case %zu: '%s'", i, error);
        assert_null(strstr(error, "words"));
        assert_null(strstr(error, "here"));
        assert_null(strstr(error, "newline"));
        assert_false(config.access_token_set);
    }

    char too_long[300];
    memset(too_long, 'b', sizeof too_long);
    const char *path = write_file("token", too_long, sizeof too_long);
    assert_int_equal(LOAD(&config, error, "--token-file", path), -1);
    assert_non_null(strstr(error, "longer than 255 bytes"));
    assert_null(strstr(error, "bbbb"));
}

static void test_two_token_variables_conflict(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    setenv("RELAY_TOKEN", "one", 1);
    setenv("RELAY_TOKEN_FILE", write_file("token", "two\n", 4), 1);
    assert_int_equal(load_args(&config, error, (const char *const[]){NULL}), -1);
    assert_non_null(strstr(error, "RELAY_TOKEN and RELAY_TOKEN_FILE"));
}

static void test_error_message_fits_a_small_buffer(void **state)
{
    struct relay_config config;
    char error[16];
    memset(error, 'x', sizeof error);
    char *argv[] = {"relay_server", "--port", "not-a-number-at-all", NULL};
    config_defaults(&config);
    assert_int_equal(config_load(&config, 3, argv, error, sizeof error), -1);
    assert_int_equal(strlen(error), sizeof error - 1);
    assert_memory_equal(error, "--port: expected", 15);
}

static void test_loading_twice_starts_afresh(void **state)
{
    struct relay_config config;
    char error[ERROR_SIZE];
    assert_int_equal(LOAD(&config, error, "--bogus"), -1);
    assert_int_equal(LOAD(&config, error, "--port", "1"), 0);
    assert_int_equal(config.port, 1);
    assert_int_equal(LOAD(&config, error, "--port", "2"), 0);
    assert_int_equal(config.port, 2);
}

static void test_parse_size(void **state)
{
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        {"0", 0},
        {"1", 1},
        {"4096", 4096},
        {"0K", 0},
        {"1K", 1024},
        {"512k", 512 * 1024},
        {"64M", 64 * MIB},
        {"64m", 64 * MIB},
        {"1G", GIB},
        {"16g", 16 * GIB},
        {"007", 7},
        {"18446744073709551615", UINT64_MAX},
        {"17179869183G", 17179869183ULL * GIB}, /* the largest whole number of G in 64 bits */
    };
    static const char *const bad[] = {
        "",
        "-1",
        "-1K",
        "+1",
        " 1",
        "1 ",
        "1 K",
        "1KB",
        "1KiB",
        "1.5M",
        "12Q",
        "K",
        "0x10",
        "1e6",
        "1T",
        "G1",
        "1GG",
        "99999999999G",
        "17179869184G",
        "18446744073709551616",
        "99999999999999999999999999",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t bytes = 12345;
        if (config_parse_size(good[i].text, &bytes) != 0 || bytes != good[i].bytes)
            fail_msg("\"%s\" should be %llu bytes, got %llu", good[i].text,
                     (unsigned long long)good[i].bytes, (unsigned long long)bytes);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t bytes = 12345;
        if (config_parse_size(bad[i], &bytes) != -1 || bytes != 12345)
            fail_msg("\"%s\" should be rejected and leave the output alone", bad[i]);
    }
    uint64_t bytes = 0;
    assert_int_equal(config_parse_size(NULL, &bytes), -1);
}

/* --help text, read back from a memory stream. */
static char *help_text(void)
{
    char *text = NULL;
    size_t size = 0;
    FILE *stream = open_memstream(&text, &size);
    assert_non_null(stream);
    config_print_help("relay_server", stream);
    assert_int_equal(fclose(stream), 0);
    return text;
}

/* The line of the help text that starts with `usage` (after the indentation). */
static const char *help_line(const char *text, const char *usage)
{
    static char line[256];
    for (const char *p = text; *p;) {
        size_t length = strcspn(p, "\n");
        const char *start = p + strspn(p, " ");
        if (strncmp(start, usage, strlen(usage)) == 0 && start[strlen(usage)] == ' ') {
            snprintf(line, sizeof line, "%.*s", (int)length, p);
            return line;
        }
        p += length + (p[length] == '\n');
    }
    fail_msg("no help line for %s", usage);
    return NULL;
}

static void test_help_lists_every_option_with_variable_and_default(void **state)
{
    static const struct {
        const char *usage, *variable, *default_text;
    } expected[] = {
        {"--listen ADDRESS", "RELAY_LISTEN", "0.0.0.0"},
        {"--port N", "RELAY_PORT", "8787"},
        {"--tls-cert FILE", "RELAY_TLS_CERT", NULL},
        {"--tls-key FILE", "RELAY_TLS_KEY", NULL},
        {"--token-file FILE", "RELAY_TOKEN_FILE", NULL},
        {"--secret-file FILE", "RELAY_SECRET_FILE", NULL},
        {"--max-message-size BYTES", "RELAY_MAX_MESSAGE_SIZE", "64M"},
        {"--max-text-size BYTES", "RELAY_MAX_TEXT_SIZE", "1M"},
        {"--max-room-members N", "RELAY_MAX_ROOM_MEMBERS", "64"},
        {"--max-rooms N", "RELAY_MAX_ROOMS", "10000"},
        {"--max-connections N", "RELAY_MAX_CONNECTIONS", "10000"},
        {"--join-rate N", "RELAY_JOIN_RATE", "30"},
        {"--global-join-failure-rate N", "RELAY_GLOBAL_JOIN_FAILURE_RATE", "3000"},
        {"--max-rooms-per-address N", "RELAY_MAX_ROOMS_PER_ADDRESS", "64"},
        {"--create-rate N", "RELAY_CREATE_RATE", "60"},
        {"--max-connections-per-address N", "RELAY_MAX_CONNECTIONS_PER_ADDRESS", "256"},
        {"--max-handshakes-per-address N", "RELAY_MAX_HANDSHAKES_PER_ADDRESS", "8"},
        {"--ping-interval SECONDS", "RELAY_PING_INTERVAL", "30"},
        {"--idle-timeout SECONDS", "RELAY_IDLE_TIMEOUT", "90"},
        {"--handshake-timeout SECONDS", "RELAY_HANDSHAKE_TIMEOUT", "5"},
        {"--resume-grace SECONDS", "RELAY_RESUME_GRACE", "30"},
        {"--receiver-buffer BYTES", "RELAY_RECEIVER_BUFFER", "16M"},
        {"--flow-control throttle|drop", "RELAY_FLOW_CONTROL", "throttle"},
        {"--slow-receiver-timeout SECONDS", "RELAY_SLOW_RECEIVER_TIMEOUT", "15"},
        {"--log-format text|json", "RELAY_LOG_FORMAT", "text"},
        {"--log-level debug|info|warn|error", "RELAY_LOG_LEVEL", "info"},
        {"--enable-echo", "RELAY_ENABLE_ECHO", NULL},
        {"RELAY_TOKEN=TOKEN", "RELAY_TOKEN", NULL},
        {"--help", NULL, NULL},
        {"--version", NULL, NULL},
    };
    char *text = help_text();
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        const char *line = help_line(text, expected[i].usage);
        char wanted[64];
        if (expected[i].variable && !strstr(line, expected[i].variable))
            fail_msg("help for %s lacks %s: %s", expected[i].usage, expected[i].variable, line);
        snprintf(wanted, sizeof wanted, "default %s", expected[i].default_text);
        if (expected[i].default_text && !strstr(line, wanted))
            fail_msg("help for %s lacks '%s': %s", expected[i].usage, wanted, line);
    }
    assert_non_null(strstr(help_line(text, "--port N"), "PORT; default 8787"));
    /* The groups the issue asks for, in order. */
    const char *previous = text;
    static const char *const groups[] = {
        "\nNetwork:\n",      "\nTLS",        "\nLimits:\n", "\nTimeouts:\n",
        "\nFlow control:\n", "\nLogging:\n", "\nTesting:\n"};
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        const char *found = strstr(previous, groups[i]);
        if (!found)
            fail_msg("help lacks the group %s after the previous one", groups[i] + 1);
        previous = found;
    }
    /* There is deliberately no --token flag. */
    assert_null(strstr(text, "--token "));
    assert_null(strstr(text, "--token="));
    for (const char *p = text; *p;) {
        size_t length = strcspn(p, "\n");
        if (length > 100)
            fail_msg("help line longer than 100 columns: %.*s", (int)length, p);
        p += length + (p[length] == '\n');
    }
    free(text);
}

/* Runs config_load with stdout redirected into a file and returns what it printed. */
static char *load_capturing_stdout(const char *const *args, int *result)
{
    char *argv[8], error[ERROR_SIZE];
    int argc = 0;
    argv[argc++] = "relay_server";
    for (; *args; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    struct relay_config config;
    config_defaults(&config);

    FILE *capture = tmpfile();
    assert_non_null(capture);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(fileno(capture), STDOUT_FILENO);
    *result = config_load(&config, argc, argv, error, sizeof error);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);

    assert_int_equal(fseek(capture, 0, SEEK_END), 0);
    long size = ftell(capture);
    assert_true(size >= 0);
    char *text = calloc(1, (size_t)size + 1);
    rewind(capture);
    assert_int_equal(fread(text, 1, (size_t)size, capture), (size_t)size);
    fclose(capture);
    return text;
}

static void test_help_and_version_print_and_return_one(void **state)
{
    int result;
    char *text = load_capturing_stdout((const char *const[]){"--help", NULL}, &result);
    assert_int_equal(result, 1);
    assert_non_null(strstr(text, "Usage: relay_server"));
    assert_non_null(strstr(text, "--max-message-size"));
    free(text);

    /* Help works even when the environment holds a bad value, so users can read it. */
    setenv("RELAY_PORT", "garbage", 1);
    text = load_capturing_stdout((const char *const[]){"-h", NULL}, &result);
    assert_int_equal(result, 1);
    assert_non_null(strstr(text, "--port N"));
    free(text);

    text = load_capturing_stdout((const char *const[]){"--version", NULL}, &result);
    assert_int_equal(result, 1);
    assert_string_equal(text, "relay_server " RELAY_VERSION "\n");
    free(text);
}

int run_config_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults_are_the_documented_ones, clear_environment),
        cmocka_unit_test_setup(test_no_arguments_and_no_environment_keep_the_defaults,
                               clear_environment),
        cmocka_unit_test_setup(test_every_option_by_flag, clear_environment),
        cmocka_unit_test_setup(test_every_option_by_flag_with_equals_sign, clear_environment),
        cmocka_unit_test_setup(test_every_option_by_environment, clear_environment),
        cmocka_unit_test_setup(test_token_from_environment, clear_environment),
        cmocka_unit_test_setup(test_enable_echo_environment_spellings, clear_environment),
        cmocka_unit_test_setup(test_flag_wins_over_environment, clear_environment),
        cmocka_unit_test_setup(test_flag_wins_without_parsing_a_bad_environment_value,
                               clear_environment),
        cmocka_unit_test_setup(test_relay_port_wins_over_port, clear_environment),
        cmocka_unit_test_setup(test_last_repeated_flag_wins, clear_environment),
        cmocka_unit_test_setup(test_token_file_flag_overrides_token_environment, clear_environment),
        cmocka_unit_test_setup(test_token_file_forms, clear_environment),
        cmocka_unit_test_setup(test_bad_inputs_give_one_line_naming_the_option, clear_environment),
        cmocka_unit_test_setup(test_tls_needs_both_files, clear_environment),
        cmocka_unit_test_setup(test_tls_file_that_is_a_directory, clear_environment),
        cmocka_unit_test_setup(test_token_file_that_is_a_directory, clear_environment),
        cmocka_unit_test_setup(test_mistyped_token_option_does_not_echo_its_value,
                               clear_environment),
        cmocka_unit_test_setup(test_bad_token_files_without_showing_the_token, clear_environment),
        cmocka_unit_test_setup(test_two_token_variables_conflict, clear_environment),
        cmocka_unit_test_setup(test_error_message_fits_a_small_buffer, clear_environment),
        cmocka_unit_test_setup(test_loading_twice_starts_afresh, clear_environment),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_help_lists_every_option_with_variable_and_default),
        cmocka_unit_test_setup(test_help_and_version_print_and_return_one, clear_environment),
    };
    int failed = UNIT_RUN_GROUP("config", tests, make_scratch, remove_scratch, test_count);
    clear_environment(NULL);
    return failed;
}
