/* test_utf8.c — protocol/utf8.c, the one UTF-8 check, against the boundary cases of RFC 3629 and
 * Markus Kuhn's decoder stress test: overlong forms, surrogates, past U+10FFFF, truncated
 * sequences. */
#include <string.h>

#include "unit.h"
#include "utf8.h"

static int valid(const char *text)
{
    return utf8_is_valid((const unsigned char *)text, strlen(text));
}

static void test_accepts_every_length_up_to_the_last_code_point(void **state)
{
    (void)state;
    assert_true(valid(""));
    assert_true(valid("plain ascii"));
    assert_true(valid("\xc2\x80"));         /* U+0080 */
    assert_true(valid("\xe0\xa0\x80"));     /* U+0800 */
    assert_true(valid("\xed\x9f\xbf"));     /* U+D7FF, just below the surrogates */
    assert_true(valid("\xee\x80\x80"));     /* U+E000, just above */
    assert_true(valid("\xf0\x90\x80\x80")); /* U+10000 */
    assert_true(valid("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
    assert_true(valid("é ✓ 𝄞"));
}

static void test_refuses_what_rfc_3629_forbids(void **state)
{
    (void)state;
    assert_false(valid("\xc0\xaf"));         /* overlong '/' */
    assert_false(valid("\xe0\x80\xaf"));     /* overlong, 3 bytes */
    assert_false(valid("\xf0\x80\x80\xaf")); /* overlong, 4 bytes */
    assert_false(valid("\xed\xa0\x80"));     /* U+D800, a surrogate */
    assert_false(valid("\xf4\x90\x80\x80")); /* U+110000 */
    assert_false(valid("\xf5\x80\x80\x80"));
    assert_false(valid("\x80"));         /* a lone continuation byte */
    assert_false(valid("\xe2\x9c"));     /* truncated */
    assert_false(valid("\xe2\x28\xa1")); /* bad continuation */
    assert_false(valid("\xfe"));
}

/* One sequence: its length and code point, read only within `size` bytes. */
static size_t decode(const char *text, size_t size, uint32_t *code_point)
{
    return utf8_decode_one((const unsigned char *)text, size, code_point);
}

static void test_decode_one_gives_each_length_and_code_point(void **state)
{
    (void)state;
    uint32_t code_point = 0;
    assert_int_equal(decode("A", 1, &code_point), 1);
    assert_int_equal(code_point, 0x41);
    assert_int_equal(decode("\xc2\x85 tail", 7, &code_point), 2); /* NEL, a C1 control */
    assert_int_equal(code_point, 0x85);
    assert_int_equal(decode("\xe2\x80\xa8", 3, &code_point), 3); /* LINE SEPARATOR */
    assert_int_equal(code_point, 0x2028);
    assert_int_equal(decode("\xf4\x8f\xbf\xbf", 4, &code_point), 4);
    assert_int_equal(code_point, 0x10FFFF);
    /* A sequence cut by the end of the input is not one, whatever follows in memory. */
    assert_int_equal(decode("\xf0\x9d\x84\x9e", 3, &code_point), 0);
    assert_int_equal(decode("\xe2\x9c\x93", 1, &code_point), 0);
    assert_int_equal(decode("\xed\xa0\x80", 3, &code_point), 0); /* surrogate */
    assert_int_equal(decode("\xc0\xaf", 2, &code_point), 0);     /* overlong */
    assert_int_equal(decode("\x80", 1, &code_point), 0);         /* continuation first */
}

int run_utf8_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_every_length_up_to_the_last_code_point),
        cmocka_unit_test(test_refuses_what_rfc_3629_forbids),
        cmocka_unit_test(test_decode_one_gives_each_length_and_code_point),
    };
    return UNIT_RUN_GROUP("utf8", tests, NULL, NULL, test_count);
}
