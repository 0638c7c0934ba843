/* test_block_cache.c — the cache of large freed blocks: a released block is handed out again
 * for a request of about its size, and a block of a size no longer asked for gives way to
 * newer ones instead of keeping them out. */
#include <stdint.h>

#include "block_cache.h"
#include "unit.h"

#define MIB ((size_t)1 << 20)

/* Obtains `size` bytes and says whether the cache handed out `expected`. */
static void *obtain(size_t size, void *expected, int *reused)
{
    size_t capacity = 0;
    void *block = block_obtain(size, 64, &capacity);
    assert_non_null(block);
    assert_true(capacity >= size);
    *reused = block == expected;
    return block;
}

static void drain(void)
{
    /* takes whatever is cached at the sizes these tests use, and frees it */
    const size_t sizes[] = {2 * MIB, 3 * MIB, 8 * MIB, 30 * MIB, 31 * MIB, 120 * MIB};
    for (int round = 0; round < BLOCK_CACHE_SLOTS; round++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            size_t capacity = 0;
            void *block = block_obtain_cached(sizes[i], sizes[i] + sizes[i] / 4, &capacity);
            free(block);
        }
}

static void test_a_released_block_is_reused_for_about_its_size(void **state)
{
    (void)state;
    drain();
    int reused = 0;
    size_t capacity = 0;
    void *first = block_obtain(8 * MIB, 64, &capacity);
    assert_non_null(first);
    block_release(first, capacity);
    void *again = obtain(7 * MIB, first, &reused);
    assert_true(reused); /* at most a quarter larger than asked */
    block_release(again, capacity);
    void *small = obtain(2 * MIB, first, &reused);
    assert_false(reused); /* four times what was asked: not handed out */
    block_release(small, 2 * MIB);
    drain();
}

static void test_the_least_recently_released_block_makes_room(void **state)
{
    (void)state;
    drain();
    void *blocks[BLOCK_CACHE_SLOTS + 1];
    size_t capacities[BLOCK_CACHE_SLOTS + 1];
    /* the first round's size, then the sizes every later round asks for */
    const size_t sizes[BLOCK_CACHE_SLOTS + 1] = {30 * MIB, 3 * MIB, 8 * MIB, 120 * MIB};
    for (int i = 0; i <= BLOCK_CACHE_SLOTS; i++) {
        blocks[i] = block_obtain(sizes[i], 64, &capacities[i]);
        assert_non_null(blocks[i]);
    }
    for (int i = 0; i <= BLOCK_CACHE_SLOTS; i++) /* one more than there are slots */
        block_release(blocks[i], capacities[i]);
    size_t capacity = 0;
    /* block_obtain_cached gives only cached blocks (NULL when none fits) */
    void *stale = block_obtain_cached(30 * MIB, 31 * MIB, &capacity);
    assert_null(stale); /* the oldest gave way */
    void *large = block_obtain_cached(120 * MIB, 150 * MIB, &capacity);
    assert_ptr_equal(large, blocks[3]); /* the last released is kept */
    void *middle = block_obtain_cached(8 * MIB, 10 * MIB, &capacity);
    assert_ptr_equal(middle, blocks[2]);
    free(large);
    free(middle);
    drain();
}

int run_block_cache_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_released_block_is_reused_for_about_its_size),
        cmocka_unit_test(test_the_least_recently_released_block_makes_room),
    };
    return UNIT_RUN_GROUP("block_cache", tests, NULL, NULL, test_count);
}
