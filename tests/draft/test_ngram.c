#include <criterion/criterion.h>

#include "common/err.h"
#include "draft/draft.h"

static const struct draft_ngram_params P = {.ngram_max = 3, .ngram_min = 1};

Test(ngram, proposes_what_followed_the_latest_earlier_match)
{
    /* "1 2 3 9 ... 1 2 3 7 8 ... 1 2 3" -> the latest earlier "1 2 3" was followed by 7 8 */
    const int32_t hist[] = {1, 2, 3, 9, 5, 1, 2, 3, 7, 8, 6, 1, 2, 3};
    int32_t out[4];
    int n;
    cr_assert_eq(draft_ngram_propose(&P, hist, 14, 4, out, &n), SPEC_OK);
    cr_assert_eq(n, 4);
    cr_assert_eq(out[0], 7);
    cr_assert_eq(out[1], 8);
    cr_assert_eq(out[2], 6);
    cr_assert_eq(out[3], 1);
}

Test(ngram, prefers_a_longer_match_over_a_later_shorter_one)
{
    /* suffix "4 5": a 2-gram match at the start (followed by 6), while only "5" matches later (followed by 9) */
    const int32_t hist[] = {4, 5, 6, 0, 5, 9, 4, 5};
    int32_t out[2];
    int n;
    cr_assert_eq(draft_ngram_propose(&P, hist, 8, 1, out, &n), SPEC_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0], 6);
}

Test(ngram, proposes_nothing_without_a_match_or_history)
{
    const int32_t hist[] = {1, 2, 3, 4};
    int32_t out[2];
    int n = -1;
    cr_assert_eq(draft_ngram_propose(&P, hist, 4, 2, out, &n), SPEC_OK);
    cr_assert_eq(n, 0);
    cr_assert_eq(draft_ngram_propose(&P, NULL, 0, 2, out, &n), SPEC_OK);
    cr_assert_eq(n, 0);
}

Test(ngram, stops_at_the_end_of_history_and_respects_max_out)
{
    const int32_t hist[] = {7, 8, 7};
    int32_t out[8];
    int n;
    cr_assert_eq(draft_ngram_propose(&P, hist, 3, 8, out, &n), SPEC_OK);
    cr_assert_eq(n, 2); /* "7" matched at 0, followed by 8 7 */
    cr_assert_eq(draft_ngram_propose(&P, hist, 3, 0, out, &n), SPEC_OK);
    cr_assert_eq(n, 0);
}

Test(ngram, rejects_inconsistent_parameters)
{
    const struct draft_ngram_params bad = {.ngram_max = 1, .ngram_min = 2};
    const int32_t hist[1] = {0};
    int32_t out[1];
    int n;
    cr_assert_eq(draft_ngram_propose(&bad, hist, 1, 1, out, &n), SPEC_E_INVALID_ARG);
}
