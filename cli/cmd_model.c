/*
 * cmd_model.c — `fedslim inspect` (architecture, parameters and FLOPs per layer) and
 * `fedslim import` (a PyTorch state_dict saved as safetensors -> a fedslim model).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_internal.h"
#include "fs_cli.h"
#include "fs_model.h"
#include "fs_safetensors.h"

static const char *op_name(fs_node_op op)
{
    switch (op) {
    case FS_NODE_CONV: return "conv";
    case FS_NODE_BN: return "batchnorm";
    case FS_NODE_RELU: return "relu";
    case FS_NODE_MAXPOOL: return "maxpool";
    case FS_NODE_ADD: return "add";
    case FS_NODE_GAP: return "avgpool";
    case FS_NODE_LINEAR: return "linear";
    }
    return "?";
}

static int64_t node_params(const fs_model *m, const fs_node *n)
{
    int64_t p = 0;
    int np = n->op == FS_NODE_BN ? 2 : 2;   /* BN running stats are buffers, not parameters */
    for (int k = 0; k < np; k++)
        if (n->p[k] >= 0)
            p += (int64_t)m->params[n->p[k]].numel;
    return p;
}

static const char INSPECT_USAGE[] = "usage: fedslim inspect MODEL.safetensors [--json]\n";

int cmd_inspect(int argc, char **argv)
{
    const char *cmd = "inspect";
    static const struct option opts[] = {{"json", no_argument, 0, 'j'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'h')
            return fputs(INSPECT_USAGE, stdout), 0;
        else
            return fputs(INSPECT_USAGE, stderr), 2;
    }
    if (optind != argc - 1) {
        fputs(INSPECT_USAGE, stderr);
        return 2;
    }
    const char *path = argv[optind];
    fs_diag d = {0};
    fs_model *m = NULL;
    if (fs_model_load(&m, path, &d))
        return fs_cli_fail(cmd, 1, "%s", fs_diag_text(&d, d.code));
    char *arch_json = NULL;
    if (fs_arch_to_json(&m->arch, &arch_json, &d)) {
        fs_model_free(m);
        return fs_cli_fail(cmd, 1, "%s", fs_diag_text(&d, d.code));
    }
    int64_t total_params = fs_model_num_params(m), total_flops = fs_model_flops(m);
    if (json) {
        json_t *root = json_object();
        json_error_t err;
        json_object_set_new(root, "model", json_string(path));
        json_object_set_new(root, "arch", json_loads(arch_json, 0, &err));
        json_object_set_new(root, "params", json_integer(total_params));
        json_object_set_new(root, "flops", json_integer(total_flops));
        json_t *layers = json_array();
        for (int i = 0; i < m->n_nodes; i++) {
            const fs_node *n = &m->nodes[i];
            json_t *l = json_object();
            json_object_set_new(l, "name", json_string(n->name));
            json_object_set_new(l, "op", json_string(op_name(n->op)));
            json_t *shape = json_array();
            json_array_append_new(shape, json_integer(n->C));
            json_array_append_new(shape, json_integer(n->H));
            json_array_append_new(shape, json_integer(n->W));
            json_object_set_new(l, "output", shape);
            json_object_set_new(l, "params", json_integer(node_params(m, n)));
            json_object_set_new(l, "flops", json_integer(fs_node_flops(m, i)));
            json_array_append_new(layers, l);
        }
        json_object_set_new(root, "layers", layers);
        char *s = json_dumps(root, JSON_INDENT(1));
        puts(s);
        free(s);
        json_decref(root);
    } else {
        const fs_arch *a = &m->arch;
        printf("model   %s\n", path);
        if (a->type == FS_ARCH_RESNET) {
            printf("arch    ResNet (%s blocks, %s stem), input %dx%dx%d, %d classes\n",
                   a->block == FS_BLOCK_BASIC ? "basic" : "bottleneck",
                   a->stem == FS_STEM_CIFAR ? "CIFAR 3x3" : "ImageNet 7x7", a->in_c, a->in_h,
                   a->in_w, a->num_classes);
            printf("stages ");
            for (int s = 0; s < a->n_stages; s++)
                printf(" layer%d: %d blocks, width %d;", s + 1, a->stages[s].n_blocks,
                       a->stages[s].width);
            printf("\n");
        } else {
            printf("arch    MLP, input %dx%dx%d, %d hidden layers, %d classes\n", a->in_c, a->in_h,
                   a->in_w, a->n_hidden, a->num_classes);
        }
        printf("%-28s %-10s %-16s %12s %14s\n", "layer", "op", "output", "params", "FLOPs");
        for (int i = 0; i < m->n_nodes; i++) {
            const fs_node *n = &m->nodes[i];
            char shape[32];
            snprintf(shape, sizeof shape, "%dx%dx%d", n->C, n->H, n->W);
            printf("%-28s %-10s %-16s %12lld %14lld\n", n->name, op_name(n->op), shape,
                   (long long)node_params(m, n), (long long)fs_node_flops(m, i));
        }
        printf("total: %lld parameters, %.2f MFLOPs per image\n", (long long)total_params,
               (double)total_flops / 1e6);
    }
    free(arch_json);
    fs_model_free(m);
    return 0;
}

static const char IMPORT_USAGE[] =
    "usage: fedslim import IN.safetensors --input CxHxW --mean M[,M..] --std S[,S..] -o OUT\n"
    "  IN is a PyTorch state_dict saved as safetensors with torchvision names (resnet18/34/50,\n"
    "  CIFAR-style resnet20/32/56 with 1x1-conv downsample, or an MLP fc1..fcN).\n";

int cmd_import(int argc, char **argv)
{
    const char *cmd = "import";
    static const struct option opts[] = {
        {"input", required_argument, 0, 'i'}, {"mean", required_argument, 0, 'm'},
        {"std", required_argument, 0, 's'},   {"output", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *input_s = NULL, *mean_s = NULL, *std_s = NULL, *out_s = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': input_s = optarg; break;
        case 'm': mean_s = optarg; break;
        case 's': std_s = optarg; break;
        case 'o': out_s = optarg; break;
        case 'h': fputs(IMPORT_USAGE, stdout); return 0;
        default: fputs(IMPORT_USAGE, stderr); return 2;
        }
    }
    if (optind != argc - 1 || !input_s || !mean_s || !std_s || !out_s) {
        fputs(IMPORT_USAGE, stderr);
        return fs_cli_fail(cmd, 2, "IN, --input, --mean, --std and -o are required");
    }
    const char *in_path = argv[optind];
    fs_diag d = {0};
    int ic, ih, iw;
    float mean[FS_MAX_CHANNELS_IN], std[FS_MAX_CHANNELS_IN];
    if (fs_cli_parse_chw(&ic, &ih, &iw, input_s, &d))
        return fs_cli_fail(cmd, 2, "%s", d.msg);
    int nm = fs_cli_parse_floats(mean, FS_MAX_CHANNELS_IN, mean_s, "--mean", &d);
    if (nm < 0)
        return fs_cli_fail(cmd, 2, "%s", d.msg);
    int ns = fs_cli_parse_floats(std, FS_MAX_CHANNELS_IN, std_s, "--std", &d);
    if (ns < 0)
        return fs_cli_fail(cmd, 2, "%s", d.msg);
    if ((nm != 1 && nm != ic) || ns != nm)
        return fs_cli_fail(cmd, 2, "--mean and --std need 1 or %d values each (got %d and %d)", ic,
                           nm, ns);
    for (int k = 0; k < ns; k++)
        if (!(std[k] > 0))
            return fs_cli_fail(cmd, 2, "--std: values must be positive");
    fs_safetensors *st = NULL;
    fs_model *m = NULL;
    fs_arch a;
    int status = 1;
    if (fs_safetensors_open(&st, in_path, &d))
        goto fail;
    if (fs_arch_infer(&a, st, ic, ih, iw, mean, std, nm, &d))
        goto fail;
    if (fs_model_from_state_dict(&m, &a, in_path, &d))
        goto fail;
    if (fs_model_save(m, out_s, &d))
        goto fail;
    fprintf(stderr, "fedslim import: %s -> %s: %s, %lld parameters, %.2f MFLOPs per image\n",
            in_path, out_s, a.type == FS_ARCH_MLP ? "MLP" : "ResNet",
            (long long)fs_model_num_params(m), (double)fs_model_flops(m) / 1e6);
    status = 0;
    goto done;
fail:
    fs_cli_fail(cmd, 1, "%s", fs_diag_text(&d, d.code));
done:
    fs_model_free(m);
    fs_safetensors_free(st);
    return status;
}
