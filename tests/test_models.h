/* test_models.h — small helpers the model-level tests share (header-only; tests only). */
#ifndef FS_TEST_MODELS_H
#define FS_TEST_MODELS_H

#include "fs_model.h"
#include "fs_rng.h"

/* Non-trivial batch-norm parameters and statistics (a freshly built model has γ=1, β=0, μ=0,
 * σ²=1, which hides mistakes): γ in [0.7, 1.3], β and μ ~ N(0, shift²), σ² in [0.5, 1.5]. */
static inline void fs_test_perturb_bn(fs_model *m, uint64_t seed, float shift)
{
    fs_rng rng;
    fs_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        for (size_t k = 0; k < p->numel; k++) {
            if (p->kind == FS_PARAM_BN_WEIGHT)
                p->data[k] = 0.7f + 0.6f * fs_rng_uniform(&rng);
            else if (p->kind == FS_PARAM_BN_BIAS || p->kind == FS_PARAM_BN_MEAN)
                p->data[k] = shift * fs_rng_normal(&rng);
            else if (p->kind == FS_PARAM_BN_VAR)
                p->data[k] = 0.5f + fs_rng_uniform(&rng);
        }
    }
}

#endif
