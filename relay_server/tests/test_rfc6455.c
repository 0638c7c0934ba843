/* test_rfc6455.c — the handshake and Close-frame rules the transport applies on top of lws 4.1
 * (rfc6455.c), and the --allowed-origin list they read (config.c), without sockets. */
#include <string.h>

#include "config.h"
#include "metrics.h"
#include "rfc6455.h"
#include "unit.h"

#define OURS "segmentation-suite-relay"

static void load_origins(struct relay_config *config, const char *first, const char *second)
{
    config_defaults(config);
    char error[256];
    char *argv[] = {"relay_server",     "--allowed-origin", (char *)first,
                    "--allowed-origin", (char *)second,     NULL};
    assert_int_equal(config_load(config, second ? 5 : 3, argv, error, sizeof error), 0);
}

static void test_version_must_be_13(void **state)
{
    struct relay_config config;
    config_defaults(&config);
    struct upgrade_refusal refusal;
    assert_true(rfc6455_check_upgrade(&config, "13", NULL, NULL, OURS, &refusal));
    assert_false(rfc6455_check_upgrade(&config, NULL, NULL, NULL, OURS, &refusal));
    assert_int_equal(refusal.status, 400);
    assert_string_equal(refusal.extra_header, "Sec-WebSocket-Version: 13");
    assert_false(rfc6455_check_upgrade(&config, "", NULL, NULL, OURS, &refusal));
    assert_int_equal(refusal.status, 400);
    const char *others[] = {"8", "130", "13 ", "1", "thirteen"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        assert_false(rfc6455_check_upgrade(&config, others[i], NULL, NULL, OURS, &refusal));
        assert_int_equal(refusal.status, 426);
        assert_string_equal(refusal.extra_header, "Sec-WebSocket-Version: 13");
        assert_int_equal(refusal.reject_reason, REJECT_BAD_HANDSHAKE);
    }
}

static void test_subprotocol_offers(void **state)
{
    struct relay_config config;
    config_defaults(&config);
    struct upgrade_refusal refusal;
    assert_true(rfc6455_check_upgrade(&config, "13", NULL, "", OURS, &refusal));
    assert_true(rfc6455_check_upgrade(&config, "13", NULL, OURS, OURS, &refusal));
    assert_true(rfc6455_check_upgrade(&config, "13", NULL, "chat , " OURS " ", OURS, &refusal));
    assert_false(rfc6455_check_upgrade(&config, "13", NULL, "chat, superchat", OURS, &refusal));
    assert_int_equal(refusal.status, 400);
    assert_non_null(strstr(refusal.body, "Sec-WebSocket-Protocol"));
    /* Names are compared whole and case-sensitively. */
    assert_false(rfc6455_check_upgrade(&config, "13", NULL, OURS "x", OURS, &refusal));
    assert_false(
        rfc6455_check_upgrade(&config, "13", NULL, "Segmentation-Suite-Relay", OURS, &refusal));
}

static void test_origins(void **state)
{
    struct relay_config config;
    struct upgrade_refusal refusal;
    config_defaults(&config); /* default: any origin */
    assert_true(rfc6455_check_upgrade(&config, "13", "https://x.example", NULL, OURS, &refusal));

    load_origins(&config, "https://lab.example", " https://b.example:8443 ,http://localhost");
    assert_string_equal(config.allowed_origins,
                        "https://lab.example,https://b.example:8443,http://localhost");
    assert_true(config_origin_allowed(&config, "https://lab.example"));
    assert_true(config_origin_allowed(&config, "HTTPS://Lab.Example"));
    assert_true(config_origin_allowed(&config, "https://b.example:8443"));
    assert_true(config_origin_allowed(&config, NULL)); /* not a browser */
    assert_false(config_origin_allowed(&config, "https://b.example"));
    assert_false(config_origin_allowed(&config, "https://lab.example.evil"));
    assert_false(config_origin_allowed(&config, "http://localhos"));
    assert_false(config_origin_allowed(&config, ""));
    assert_false(
        rfc6455_check_upgrade(&config, "13", "https://evil.example", NULL, OURS, &refusal));
    assert_int_equal(refusal.status, 403);
    assert_int_equal(refusal.reject_reason, REJECT_ORIGIN);

    /* Empty entries and spaces inside an origin are refused with the option's name. */
    config_defaults(&config);
    char error[256];
    char *bad[] = {"relay_server", "--allowed-origin", "https://a.example,,https://b.example",
                   NULL};
    assert_int_equal(config_load(&config, 3, bad, error, sizeof error), -1);
    assert_non_null(strstr(error, "--allowed-origin"));
    char *spaced[] = {"relay_server", "--allowed-origin", "https://a .example", NULL};
    assert_int_equal(config_load(&config, 3, spaced, error, sizeof error), -1);
}

static void test_close_payload(void **state)
{
    assert_true(rfc6455_close_payload_valid(0));
    assert_false(rfc6455_close_payload_valid(1));
    assert_true(rfc6455_close_payload_valid(2));
    assert_true(rfc6455_close_payload_valid(125));
}

int run_rfc6455_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_must_be_13),
        cmocka_unit_test(test_subprotocol_offers),
        cmocka_unit_test(test_origins),
        cmocka_unit_test(test_close_payload),
    };
    return UNIT_RUN_GROUP("rfc6455", tests, NULL, NULL, test_count);
}
