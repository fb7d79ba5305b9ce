/*
 * fs_arch.h — the architecture of a fedslim model: plain data, stored as versioned JSON under
 * __metadata__["fedslim.arch"] of the model's safetensors file (docs/model-format.md).
 *
 * Supported: the ResNet family (BasicBlock / Bottleneck, CIFAR 3x3 stem or ImageNet 7x7/2 stem +
 * max pool, any stage depths and widths) and MLPs. A compressed model keeps torchvision names and
 * records here what changed: fewer blocks (renumbered, with the teacher block each came from),
 * other widths, factorized (low-rank), N:M-sparse or int8 layers.
 */
#ifndef FS_ARCH_H
#define FS_ARCH_H

#include "fs_safetensors.h"
#include "fs_util.h"

#define FS_ARCH_VERSION 1
#define FS_MAX_STAGES 8
#define FS_MAX_BLOCKS 64        /* per stage */
#define FS_MAX_HIDDEN 16        /* MLP hidden layers */
#define FS_MAX_CHANNELS_IN 4    /* input channels (per-channel mean/std) */

typedef enum { FS_ARCH_RESNET = 1, FS_ARCH_MLP = 2 } fs_arch_type;
typedef enum { FS_BLOCK_BASIC = 1, FS_BLOCK_BOTTLENECK = 2 } fs_block_type;
typedef enum { FS_STEM_CIFAR = 1, FS_STEM_IMAGENET = 2 } fs_stem_type;

/* How one conv or linear layer is stored. All zero = a plain dense float layer. */
typedef struct {
    int rank;       /* > 0: factorized: conv -> "<name>.0" [rank,C,KH,KW] + "<name>.1" [OC,rank,1,1];
                       linear -> "<name>.0" [rank,IN] + "<name>.1" [OUT,rank] (+ bias on .1) */
    int nm_n, nm_m; /* > 0: N:M sparse along the reduction dimension (e.g. 2:4) */
    int qbits;      /* 8: int8 per-output-channel symmetric weights (BN folded) */
} fs_layer_opts;

typedef struct {
    int mid[2];             /* inner widths: basic: conv1 out = mid[0]; bottleneck: conv1, conv2 out */
    int stride;             /* 1 or 2 (block 0 of a stage may downsample) */
    int downsample;         /* 1: shortcut is downsample.0 (1x1 conv, stride) + downsample.1 (BN) */
    fs_layer_opts conv[3];  /* conv1..conv3 */
    fs_layer_opts ds;       /* downsample.0 */
    char origin[32];        /* the teacher block it came from ("layer1.2"); "" = same name */
} fs_block_arch;

typedef struct {
    int width;              /* block output width (the residual stream of the stage) */
    int n_blocks;
    fs_block_arch blocks[FS_MAX_BLOCKS];
} fs_stage_arch;

typedef struct {
    int version;            /* FS_ARCH_VERSION */
    fs_arch_type type;
    int in_c, in_h, in_w;   /* input image, C x H x W */
    int num_classes;
    float mean[FS_MAX_CHANNELS_IN], std[FS_MAX_CHANNELS_IN];   /* per input channel */

    /* ResNet */
    fs_block_type block;
    fs_stem_type stem;
    int stem_width;         /* conv1 out channels */
    fs_layer_opts stem_opts, fc_opts;
    int n_stages;           /* names layer1..layerN */
    fs_stage_arch stages[FS_MAX_STAGES];

    /* MLP: fc1 .. fc{n_hidden+1}; ReLU after every hidden layer; input flattened C*H*W */
    int n_hidden;
    int hidden[FS_MAX_HIDDEN];
    fs_layer_opts mlp_opts[FS_MAX_HIDDEN + 1];
} fs_arch;

/* A standard ResNet: depths[i] blocks of width widths[i] per stage (for Bottleneck, widths are
 * the inner widths and the output is 4x, as torchvision). Stage 0 stride 1, later stages 2. */
int fs_arch_resnet(fs_arch *a, fs_block_type block, fs_stem_type stem, int n_stages,
                   const int *depths, const int *widths, int in_c, int in_h, int in_w,
                   int num_classes, fs_diag *d);
/* An MLP in_c*in_h*in_w -> hidden[0] -> ... -> num_classes. */
int fs_arch_mlp(fs_arch *a, int n_hidden, const int *hidden, int in_c, int in_h, int in_w,
                int num_classes, fs_diag *d);
/* Checks every field for consistency (widths > 0, strides, downsample where shapes change, ...). */
int fs_arch_validate(const fs_arch *a, fs_diag *d);

/* JSON text (returns owned, free()) and back. from_json rejects unknown versions, missing or
 * out-of-range fields, naming the field. */
int fs_arch_to_json(const fs_arch *a, char **out, fs_diag *d);
int fs_arch_from_json(fs_arch *a, const char *json, size_t len, fs_diag *d);

/* Infers the architecture of a PyTorch state_dict saved as safetensors with torchvision names
 * (conv1, bn1, layerS.B.convK/bnK, layerS.B.downsample.0/1, fc; an MLP as fc1..fcN with biases),
 * from the tensor shapes themselves (so channel-pruned models import too). Block type: conv3
 * present -> Bottleneck; stem: conv1 kernel 7 -> ImageNet, 3 -> CIFAR. Assumes torchvision's
 * strides: 1 in stage 1, 2 on block 0 of every later stage (weights cannot tell strides).
 * Then checks that every tensor has the shape the inferred architecture needs and that no tensor
 * is unknown (num_batches_tracked of a batch norm is accepted and ignored).
 * in_c <= 0: taken from conv1.weight (or fc1 for an MLP); in_h, in_w: the input size (> 0).
 * mean/std: n_mean values (0: mean 0, std 1; 1: the same for every channel; in_c: per channel).
 * Writes *a only on success; errors name the file, the tensor and both shapes. */
int fs_arch_infer(fs_arch *a, const fs_safetensors *st, int in_c, int in_h, int in_w,
                  const float *mean, const float *std, int n_mean, fs_diag *d);

#endif
