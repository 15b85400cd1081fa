#include <string.h>

#include "common/err.h"
#include "draft/draft.h"

int draft_ngram_propose(const struct draft_ngram_params *p, const int32_t *hist, size_t n_hist, int max_out,
                        int32_t *out, int *n_out)
{
    if (!p || !out || !n_out || max_out < 0 || p->ngram_min < 1 || p->ngram_max < p->ngram_min ||
        (n_hist > 0 && !hist))
        return SPEC_E_INVALID_ARG;
    *n_out = 0;
    /* Longer matches predict better, so they win; among equal lengths the latest occurrence wins,
     * since recent context (the code being edited, the sentence being repeated) predicts best. */
    for (int n = p->ngram_max; n >= p->ngram_min; n--) {
        if ((size_t)n >= n_hist)
            continue;
        const int32_t *suffix = hist + n_hist - (size_t)n;
        for (size_t start = n_hist - (size_t)n; start-- > 0;) {
            if (memcmp(hist + start, suffix, (size_t)n * sizeof *hist) != 0)
                continue;
            const size_t follow = start + (size_t)n;
            size_t avail = n_hist - follow;
            if (avail > (size_t)max_out)
                avail = (size_t)max_out;
            memcpy(out, hist + follow, avail * sizeof *out);
            *n_out = (int)avail;
            return SPEC_OK;
        }
    }
    return SPEC_OK;
}
