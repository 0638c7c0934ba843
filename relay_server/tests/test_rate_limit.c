/* test_rate_limit.c — the join-attempt token buckets: the per-minute budget and its refill, the
 * retry_after hint, IPv6 clients grouped by /64, and the bounded address table with its sweep. */
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

static void test_budget_and_refill(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(6, 100);
    take(limiter, "192.0.2.1", 0, 6);
    /* 6 per minute: one token every 10 s. */
    double retry_after = refused(limiter, "192.0.2.1", 0);
    assert_float_equal(retry_after, 10.0, 1e-9);
    retry_after = refused(limiter, "192.0.2.1", 4);
    assert_float_equal(retry_after, 6.0, 1e-9);
    take(limiter, "192.0.2.1", 10, 1);
    refused(limiter, "192.0.2.1", 10);
    /* Other addresses have their own budget. */
    take(limiter, "192.0.2.2", 10, 6);
    /* A long pause refills to the budget, not beyond. */
    take(limiter, "192.0.2.1", 1000, 6);
    refused(limiter, "192.0.2.1", 1000);
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

static void test_sweep_forgets_only_full_buckets(void **state)
{
    struct rate_limiter *limiter = rate_limiter_create(6, 100); /* a token every 10 s */
    take(limiter, "192.0.2.1", 0, 6);
    take(limiter, "192.0.2.2", 55, 2);
    rate_limiter_sweep(limiter, 56);
    assert_int_equal(rate_limiter_size(limiter), 2); /* neither is full again yet */
    rate_limiter_sweep(limiter, 61);
    assert_int_equal(rate_limiter_size(limiter), 1); /* .1 refilled after 60 s, .2 not */
    /* The kept bucket kept its state: 4.6 tokens left. */
    take(limiter, "192.0.2.2", 61, 4);
    refused(limiter, "192.0.2.2", 61);
    rate_limiter_sweep(limiter, 200);
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
    rate_limiter_sweep(limiter, 60);
    assert_int_equal(rate_limiter_size(limiter), 0);
    take(limiter, "198.51.100.200", 60, 5);
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
        cmocka_unit_test(test_budget_and_refill),
        cmocka_unit_test(test_ipv6_grouped_by_64),
        cmocka_unit_test(test_sweep_forgets_only_full_buckets),
        cmocka_unit_test(test_address_table_is_bounded),
        cmocka_unit_test(test_zero_budget_refuses_everything),
    };
    return UNIT_RUN_GROUP("rate_limit", tests, NULL, NULL, test_count);
}
