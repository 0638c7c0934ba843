/* test_rate_limit.c — per-address event windows: the per-minute budget that no slowness refills,
 * check without spending, the retry_after hint, IPv6 clients grouped by /64, and the bounded
 * address table with its sweep. */
#include <stdio.h>

#include "rate_limit.h"
#include "unit.h"

static void take(struct rate_limiter *limiter, const char *address, double now, int times)
{
    for (int i = 0; i < times; i++) {
        double retry_after = -1;
        if (!rate_limiter_allow(limiter, address, now, &retry_after))
            fail_msg("%s refused at attempt %d", address, i + 1);
    }
}

static double refused(struct rate_limiter *limiter, const char *address, double now)
{
    double retry_after = -1;
    assert_false(rate_limiter_allow(limiter, address, now, &retry_after));
    assert_true(retry_after > 0);
    return retry_after;
}

static void test_budget_per_minute_however_slow_the_attempts(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(6, 100);
    /* Six attempts spread over most of a minute use the budget up: no refill in between. */
    for (int i = 0; i < 6; i++)
        take(limiter, "192.0.2.1", 9.0 * i, 1);
    double retry_after = refused(limiter, "192.0.2.1", 50);
    /* The window ends at 60; its 6 events then fade over the next minute, and one more fits
     * once they count for 5: at 60 + 60/6 = 70. */
    assert_float_equal(retry_after, 20.0, 1e-9);
    refused(limiter, "192.0.2.1", 69.9);
    take(limiter, "192.0.2.1", 70, 1);
    refused(limiter, "192.0.2.1", 70);
    /* Other addresses have their own budget. */
    take(limiter, "192.0.2.2", 10, 6);
    /* After two quiet minutes the whole budget is back, not more. */
    take(limiter, "192.0.2.1", 1000, 6);
    refused(limiter, "192.0.2.1", 1000);
    rate_limiter_destroy(limiter);
}

static void test_check_does_not_count_and_spend_counts_past_the_budget(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(2, 100);
    double retry_after = -1;
    for (int i = 0; i < 5; i++)
        assert_true(rate_limiter_check(limiter, "192.0.2.1", 0, &retry_after));
    assert_int_equal(rate_limiter_size(limiter), 0); /* checking leaves no trace */
    rate_limiter_spend(limiter, "192.0.2.1", 0);
    assert_true(rate_limiter_check(limiter, "192.0.2.1", 0, &retry_after));
    rate_limiter_spend(limiter, "192.0.2.1", 0);
    rate_limiter_spend(limiter, "192.0.2.1", 0); /* past the budget, still counted */
    refused(limiter, "192.0.2.1", 0);
    /* Three in the window: one more fits once they count for one, at 60 + 60 * 2/3. */
    assert_float_equal(refused(limiter, "192.0.2.1", 60), 40.0, 1e-9);
    take(limiter, "192.0.2.1", 100, 1);
    rate_limiter_destroy(limiter);
}

static void test_ipv6_grouped_by_64(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(2, 100);
    take(limiter, "2001:db8:1:2::1", 0, 1);
    take(limiter, "2001:db8:1:2:ffff:ffff:ffff:ffff", 0, 1);
    refused(limiter, "2001:db8:1:2::99", 0);
    assert_int_equal(rate_limiter_size(limiter), 1);
    /* The neighbouring /64 is someone else. */
    take(limiter, "2001:db8:1:3::1", 0, 2);
    assert_int_equal(rate_limiter_size(limiter), 2);
    /* IPv4-mapped addresses are IPv4 hosts: not grouped. */
    take(limiter, "::ffff:192.0.2.1", 0, 2);
    take(limiter, "::ffff:192.0.2.2", 0, 2);
    assert_int_equal(rate_limiter_size(limiter), 4);
    rate_limiter_destroy(limiter);
}

static void test_sweep_forgets_only_quiet_addresses(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(6, 100);
    take(limiter, "192.0.2.1", 0, 6);
    take(limiter, "192.0.2.2", 100, 2);
    rate_limiter_sweep(limiter, 110);
    assert_int_equal(rate_limiter_size(limiter), 2); /* both were heard within two minutes */
    rate_limiter_sweep(limiter, 121);
    assert_int_equal(rate_limiter_size(limiter), 1); /* .1 quiet for two windows, .2 not */
    /* The kept address kept its count: 4 more fit. */
    take(limiter, "192.0.2.2", 121, 4);
    refused(limiter, "192.0.2.2", 121);
    rate_limiter_sweep(limiter, 241);
    assert_int_equal(rate_limiter_size(limiter), 0);
    rate_limiter_sweep(limiter, 300); /* empty: nothing to do */
    take(limiter, "192.0.2.1", 300, 6);
    refused(limiter, "192.0.2.1", 300);
    rate_limiter_destroy(limiter);
}

static void test_address_table_is_bounded(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(5, 3);
    char address[32];
    for (int i = 0; i < 3; i++) {
        snprintf(address, sizeof address, "198.51.100.%d", i);
        take(limiter, address, 0, 1);
    }
    /* A fourth address is refused until old entries are forgotten. */
    assert_float_equal(refused(limiter, "198.51.100.200", 0), 60.0, 1e-9);
    take(limiter, "198.51.100.1", 0, 1); /* known addresses still work */
    rate_limiter_sweep(limiter, 120);
    assert_int_equal(rate_limiter_size(limiter), 0);
    take(limiter, "198.51.100.200", 120, 5);
    rate_limiter_destroy(limiter);
}

static void test_zero_budget_refuses_everything(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(0, 10);
    refused(limiter, "192.0.2.1", 0);
    assert_int_equal(rate_limiter_size(limiter), 0);
    rate_limiter_destroy(limiter);
}

int run_rate_limit_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_per_minute_however_slow_the_attempts),
        cmocka_unit_test(test_check_does_not_count_and_spend_counts_past_the_budget),
        cmocka_unit_test(test_ipv6_grouped_by_64),
        cmocka_unit_test(test_sweep_forgets_only_quiet_addresses),
        cmocka_unit_test(test_address_table_is_bounded),
        cmocka_unit_test(test_zero_budget_refuses_everything),
    };
    return UNIT_RUN_GROUP("rate_limit", tests, NULL, NULL, test_count);
}
