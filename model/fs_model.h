/*
 * fs_model.h — a network as a small graph of layers built from an fs_arch, with its parameters,
 * forward and backward passes (through kernels/), initialisation, and safetensors load/save.
 *
 * Parameters carry torchvision names ("layer1.0.conv1.weight", "bn1.running_mean", "fc.bias") and
 * PyTorch layouts. All parameter data live in one 64-byte aligned block, gradients in another
 * (STYLE C9). Activations for a batch live in an fs_run, so several runs (teacher, student) can share
 * a model, and a model can be evaluated while another is trained.
 *
 * Thread-safety: a model and a run are used by one thread at a time; kernels parallelise inside.
 */
#ifndef FS_MODEL_H
#define FS_MODEL_H

#include <stdint.h>

#include "fs_arch.h"
#include "fs_kernels.h"
#include "fs_util.h"

typedef enum {
    FS_NODE_CONV = 1,
    FS_NODE_BN = 2,
    FS_NODE_RELU = 3,
    FS_NODE_MAXPOOL = 4,
    FS_NODE_ADD = 5,        /* in0 + in1 */
    FS_NODE_GAP = 6,        /* [N,C,H,W] -> [N,C] */
    FS_NODE_LINEAR = 7,     /* flattens its input */
} fs_node_op;

typedef enum {
    FS_PARAM_WEIGHT = 1,
    FS_PARAM_BIAS = 2,
    FS_PARAM_BN_WEIGHT = 3,
    FS_PARAM_BN_BIAS = 4,
    FS_PARAM_BN_MEAN = 5,   /* buffer: never trained */
    FS_PARAM_BN_VAR = 6,    /* buffer: never trained */
    /* int8 layers (qbits 8, docs/model-format.md): buffers, never trained, not counted as params */
    FS_PARAM_WEIGHT_SCALE = 7,      /* [OC] per-output-channel scale: weight = scale * int8 */
    FS_PARAM_INPUT_SCALE = 8,       /* [1] scale of the uint8 input; 0 = not calibrated yet (the
                                       input passes unquantized, in memory only) */
    FS_PARAM_INPUT_ZERO_POINT = 9,  /* [1] zero point of the uint8 input (an integer 0..255) */
} fs_param_kind;

/* 1 for tensors that are never trained (BN running statistics, quantization parameters). */
static inline int fs_param_is_buffer(fs_param_kind k)
{
    return k == FS_PARAM_BN_MEAN || k == FS_PARAM_BN_VAR || k == FS_PARAM_WEIGHT_SCALE ||
           k == FS_PARAM_INPUT_SCALE || k == FS_PARAM_INPUT_ZERO_POINT;
}

typedef struct {
    char name[96];
    fs_param_kind kind;
    int ndim;
    int64_t shape[4];
    size_t numel;
    float *data;            /* view into the model's parameter block */
    float *grad;            /* view into the gradient block (NULL for buffers) */
    int trainable;          /* 0: frozen (no gradient accumulated, optimizer skips it) */
} fs_param;

typedef struct {
    fs_node_op op;
    char name[80];          /* module name: "layer1.0.conv1", "layer1.0.relu2", "fc" */
    int in0, in1;           /* producer nodes; -1 = the model input */
    int C, H, W;            /* output shape per sample */
    fs_conv2d_shape conv;   /* CONV: N is set per run */
    fs_pool_shape pool;     /* MAXPOOL */
    int in_features, out_features;  /* LINEAR */
    int p[4];               /* parameter indices or -1: CONV/LINEAR weight, bias; BN weight, bias,
                               running_mean, running_var */
    int block;              /* index of the residual block it belongs to (fs_model.blocks), or -1 */
    /* CONV/LINEAR: the storage options of this (plain, unfactorized) layer, from the arch; for a
     * factorized layer both factors carry the layer's nm/qbits (rank is always 0 here). */
    fs_layer_opts opts;
    /* qbits 8: parameter indices of weight_scale, input_scale, input_zero_point; else -1. The
     * in-memory weight holds the dequantized values scale * q; a folded BN is the conv's bias. */
    int q[3];
} fs_node;

/* A residual block as the compression methods see it. */
typedef struct {
    char name[32];          /* "layer2.1" */
    int stage, index;       /* 0-based stage, block index within the stage */
    int identity;           /* 1: identity shortcut (a candidate for block dropping) */
    int first_node, last_node;  /* node range [first, last] of the block (last = its output ReLU) */
} fs_block_info;

/* A 1x1 C->C adaptor (identity-initialised, no bias) attached to a conv (ALGORITHMS.md a.3). */
typedef enum { FS_ADAPTOR_AFTER = 1, FS_ADAPTOR_PRE = 2 } fs_adaptor_pos;
typedef struct {
    char conv[80];          /* module name of the conv it is attached to */
    fs_adaptor_pos pos;
} fs_adaptor_spec;

typedef struct fs_model {
    fs_arch arch;
    int n_nodes;
    fs_node *nodes;
    int n_params;
    fs_param *params;
    float *param_block;
    float *grad_block;
    size_t param_floats, grad_floats;
    int feat_node;          /* pre-GAP features (ResNet) / last hidden activation (MLP) */
    int logits_node;
    int n_blocks;
    fs_block_info *blocks;
} fs_model;

/* Builds the graph for `a` (validated first) with parameters allocated and zero, BN running_var 1
 * and BN weight 1. adaptors: optional list (n_adaptors may be 0). returns owned: fs_model_free. */
int fs_model_build(fs_model **out, const fs_arch *a, const fs_adaptor_spec *adaptors,
                   int n_adaptors, fs_diag *d);
void fs_model_free(fs_model *m);
/* torchvision initialisation: conv kaiming_normal(fan_out, relu), BN 1/0, linear PyTorch default
 * (uniform ±1/sqrt(fan_in) for weight and bias), adaptors identity. Deterministic for a seed. */
void fs_model_init(fs_model *m, uint64_t seed);
/* Deep copy (same graph, same values). */
int fs_model_clone(fs_model **out, const fs_model *m, fs_diag *d);

fs_param *fs_model_param(fs_model *m, const char *name);
const fs_param *fs_model_param_c(const fs_model *m, const char *name);
int fs_model_node(const fs_model *m, const char *name);      /* index or -1 */
/* Copies every parameter of `src` whose name and shape exist in `dst`; returns the count copied. */
int fs_model_copy_matching(fs_model *dst, const fs_model *src);
/* Marks all parameters (un)trainable; then individual ones can be changed by name. */
void fs_model_set_trainable(fs_model *m, int trainable);
void fs_model_zero_grad(fs_model *m);

/* Totals: trainable-or-not parameters (buffers excluded) and forward FLOPs per sample
 * (2 x multiply-adds, convs and linears; BN/ReLU/pool/add counted as 1 per element). */
int64_t fs_model_num_params(const fs_model *m);
int64_t fs_model_flops(const fs_model *m);
int64_t fs_node_flops(const fs_model *m, int node);

/* Safetensors I/O. Load checks every tensor against the architecture (missing, extra, wrong shape)
 * and names the file and tensor in errors; PyTorch's num_batches_tracked is ignored. */
int fs_model_load(fs_model **out, const char *path, fs_diag *d);
int fs_model_save(const fs_model *m, const char *path, fs_diag *d);
/* Builds a model for `a` and fills it from a PyTorch state_dict file (same checks as load). */
int fs_model_from_state_dict(fs_model **out, const fs_arch *a, const char *path, fs_diag *d);

/* ---- running the network ------------------------------------------------------------------ */

typedef enum {
    FS_MODE_EVAL = 0,       /* BN uses running statistics */
    FS_MODE_TRAIN = 1,      /* BN uses batch statistics and updates the running ones */
    FS_MODE_TRAIN_NOSTATS = 2, /* BN uses batch statistics, running ones left unchanged */
} fs_mode;

typedef struct fs_run fs_run;

/* Activation memory for batches of up to max_batch samples. returns owned: fs_run_free. */
int fs_run_create(fs_run **out, const fs_model *m, int max_batch, fs_diag *d);
void fs_run_free(fs_run *r);
int fs_run_max_batch(const fs_run *r);
/* Forward pass of x [N, in_c, in_h, in_w] (already normalised). Zeroes the output gradients. */
void fs_run_forward(fs_run *r, fs_model *m, const float *x, int N, fs_mode mode);
/* Forward pass that stops after node `last` (outputs of later nodes are not computed). */
void fs_run_forward_until(fs_run *r, fs_model *m, const float *x, int N, fs_mode mode, int last);
/* Output of a node for the last forward: [N, C, H, W] (or [N, C]). */
const float *fs_run_out(const fs_run *r, int node);
/* Gradient with respect to a node's output: the caller writes (or adds) the loss gradient here,
 * then calls fs_run_backward. */
float *fs_run_dout(fs_run *r, int node);
/* Backward pass: accumulates gradients of trainable parameters into their .grad (callers zero them
 * with fs_model_zero_grad). Uses the mode of the last forward for BN. */
void fs_run_backward(fs_run *r, fs_model *m);
/* Per-sample output size of a node (C*H*W). */
size_t fs_node_numel(const fs_model *m, int node);

/* Fake quantization to uint8 (the input of an int8 layer): y = (clamp(rint(x / s) + z, 0, 255)
 * - z) * s, rint rounding half to even (torch.round's rule). s > 0; y may alias x. */
void fs_fake_quant_u8(float *y, const float *x, size_t n, float s, float z);

#endif
