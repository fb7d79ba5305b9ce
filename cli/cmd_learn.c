/*
 * cmd_learn.c — `fedslim train` and `fedslim eval`.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_internal.h"
#include "fs_cli.h"
#include "fs_learn.h"

int fs_cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi)
        return fs_cli_fail(cmd, 2, "%s '%s': expected an integer in [%ld, %ld]", opt, s, lo, hi);
    *out = v;
    return 0;
}

int fs_cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi))
        return fs_cli_fail(cmd, 2, "%s '%s': expected a number in [%g, %g]", opt, s, lo, hi);
    *out = v;
    return 0;
}

static const char TRAIN_USAGE[] =
    "usage: fedslim train --arch ARCH --data SPEC -o OUT.safetensors [options]\n"
    "  --arch ARCH        resnet20|resnet32|resnet56|resnet18|resnet34|resnet50|mlp:512,256|\n"
    "                     resnet:basic|bottleneck:cifar|imagenet:DEPTHS:WIDTHS\n"
    "  --data SPEC        idx:DIR/PREFIX | folder:PATH (labeled training data)\n"
    "  --eval SPEC        test data evaluated after every epoch\n"
    "  --epochs N (15) --batch N (128) --lr X (0.1) --momentum X (0.9) --wd X (5e-4)\n"
    "  --nesterov         Nesterov momentum\n"
    "  --augment PAD      random crop with PAD pixels of padding + horizontal flip (default 2; 0 off)\n"
    "  --no-flip          no horizontal flip\n"
    "  --mean M[,M..] --std S[,S..]   normalisation (default: computed from the training data)\n"
    "  --classes N        number of classes (default: largest label + 1)\n"
    "  --seed N (1) --threads N (0 = all CPUs)\n";

int cmd_train(int argc, char **argv)
{
    const char *cmd = "train";
    static const struct option opts[] = {
        {"arch", required_argument, 0, 'a'},   {"data", required_argument, 0, 'd'},
        {"eval", required_argument, 0, 'e'},   {"epochs", required_argument, 0, 'E'},
        {"batch", required_argument, 0, 'b'},  {"lr", required_argument, 0, 'l'},
        {"momentum", required_argument, 0, 'm'}, {"wd", required_argument, 0, 'w'},
        {"nesterov", no_argument, 0, 'n'},     {"augment", required_argument, 0, 'A'},
        {"no-flip", no_argument, 0, 'F'},      {"mean", required_argument, 0, 'M'},
        {"std", required_argument, 0, 'S'},    {"seed", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'}, {"output", required_argument, 0, 'o'},
        {"classes", required_argument, 0, 'C'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *arch_s = NULL, *data_s = NULL, *eval_s = NULL, *out_s = NULL, *mean_s = NULL,
               *std_s = NULL;
    long classes = 0;
    long epochs = 15, batch = 128, pad = 2, seed = 1, threads = 0;
    double lr = 0.1, mom = 0.9, wd = 5e-4;
    int nesterov = 0, flip = 1, c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': arch_s = optarg; break;
        case 'd': data_s = optarg; break;
        case 'e': eval_s = optarg; break;
        case 'o': out_s = optarg; break;
        case 'M': mean_s = optarg; break;
        case 'S': std_s = optarg; break;
        case 'n': nesterov = 1; break;
        case 'F': flip = 0; break;
        case 'E': if ((rc = fs_cli_int(cmd, "--epochs", optarg, 1, 100000, &epochs))) return rc; break;
        case 'C': if ((rc = fs_cli_int(cmd, "--classes", optarg, 1, 1000000, &classes))) return rc; break;
        case 'b': if ((rc = fs_cli_int(cmd, "--batch", optarg, 1, 65536, &batch))) return rc; break;
        case 'A': if ((rc = fs_cli_int(cmd, "--augment", optarg, 0, 64, &pad))) return rc; break;
        case 's': if ((rc = fs_cli_int(cmd, "--seed", optarg, 0, 1L << 62, &seed))) return rc; break;
        case 't': if ((rc = fs_cli_int(cmd, "--threads", optarg, 0, 1024, &threads))) return rc; break;
        case 'l': if ((rc = fs_cli_float(cmd, "--lr", optarg, 0, 100, &lr))) return rc; break;
        case 'm': if ((rc = fs_cli_float(cmd, "--momentum", optarg, 0, 1, &mom))) return rc; break;
        case 'w': if ((rc = fs_cli_float(cmd, "--wd", optarg, 0, 1, &wd))) return rc; break;
        case 'h': fputs(TRAIN_USAGE, stdout); return 0;
        default: fputs(TRAIN_USAGE, stderr); return 2;
        }
    }
    if (!arch_s || !data_s || !out_s || optind != argc) {
        fputs(TRAIN_USAGE, stderr);
        return fs_cli_fail(cmd, 2, "--arch, --data and -o are required");
    }
    fs_threads_configure((int)threads);
    fs_diag d = {0};
    fs_dataset *train = NULL, *test = NULL;
    fs_model *m = NULL;
    int status = 1;
    fs_data_opts to = {.num_classes = (int)classes};
    if (fs_dataset_open(&train, data_s, &to, &d))
        goto fail;
    if (!train->labels) {
        fs_diag_set(&d, FS_EINVAL, "%s: training needs labeled data", data_s);
        goto fail;
    }
    if (eval_s) {
        fs_data_opts eo = {.channels = train->c, .height = train->h, .width = train->w, .resize = 1};
        if (fs_dataset_open(&test, eval_s, &eo, &d))
            goto fail;
    }
    fs_arch a;
    if (fs_cli_parse_arch(&a, arch_s, train->c, train->h, train->w, train->num_classes, &d))
        goto fail;
    fs_data_stats(train, a.mean, a.std);
    if (mean_s && fs_cli_parse_floats(a.mean, FS_MAX_CHANNELS_IN, mean_s, "--mean", &d) != a.in_c) {
        if (!d.msg[0])
            fs_diag_set(&d, FS_EINVAL, "--mean: need %d values", a.in_c);
        goto fail;
    }
    if (std_s && fs_cli_parse_floats(a.std, FS_MAX_CHANNELS_IN, std_s, "--std", &d) != a.in_c) {
        if (!d.msg[0])
            fs_diag_set(&d, FS_EINVAL, "--std: need %d values", a.in_c);
        goto fail;
    }
    if (fs_model_build(&m, &a, NULL, 0, &d))
        goto fail;
    fs_model_init(m, (uint64_t)seed);
    fprintf(stderr, "fedslim train: %s on %s (%d images, %d classes), %lld parameters, "
            "%.1f MFLOP/image, %s\n", arch_s, data_s, train->n, train->num_classes,
            (long long)fs_model_num_params(m), (double)fs_model_flops(m) / 1e6,
            fs_threads_describe());
    fs_train_config tc = {.epochs = (int)epochs, .batch = (int)batch, .lr = (float)lr,
                          .momentum = (float)mom, .weight_decay = (float)wd, .nesterov = nesterov,
                          .seed = (uint64_t)seed, .aug = {.pad = (int)pad, .hflip = flip},
                          .eval = test, .progress = stderr, .progress_tty = isatty(2)};
    double t0 = fs_now_sec();
    if (fs_train_supervised(m, train, &tc, &d))
        goto fail;
    if (fs_model_save(m, out_s, &d))
        goto fail;
    fprintf(stderr, "fedslim train: wrote %s after %.0f s\n", out_s, fs_now_sec() - t0);
    status = 0;
    goto done;
fail:
    fs_cli_fail(cmd, 1, "%s", fs_diag_text(&d, d.code));
done:
    fs_model_free(m);
    fs_dataset_free(train);
    fs_dataset_free(test);
    return status;
}

static const char EVAL_USAGE[] =
    "usage: fedslim eval --model M.safetensors --data SPEC [--json] [--batch N] [--threads N]\n";

int cmd_eval(int argc, char **argv)
{
    const char *cmd = "eval";
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"data", required_argument, 0, 'd'},
        {"json", no_argument, 0, 'j'},        {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model_s = NULL, *data_s = NULL;
    int json = 0, c, rc;
    long batch = 256, threads = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_s = optarg; break;
        case 'd': data_s = optarg; break;
        case 'j': json = 1; break;
        case 'b': if ((rc = fs_cli_int(cmd, "--batch", optarg, 1, 65536, &batch))) return rc; break;
        case 't': if ((rc = fs_cli_int(cmd, "--threads", optarg, 0, 1024, &threads))) return rc; break;
        case 'h': fputs(EVAL_USAGE, stdout); return 0;
        default: fputs(EVAL_USAGE, stderr); return 2;
        }
    }
    if (!model_s || !data_s || optind != argc) {
        fputs(EVAL_USAGE, stderr);
        return fs_cli_fail(cmd, 2, "--model and --data are required");
    }
    fs_threads_configure((int)threads);
    fs_diag d = {0};
    fs_model *m = NULL;
    fs_dataset *ds = NULL;
    int status = 1;
    if (fs_model_load(&m, model_s, &d))
        goto fail;
    fs_data_opts o = {.channels = m->arch.in_c, .height = m->arch.in_h, .width = m->arch.in_w,
                      .resize = 1};
    if (fs_dataset_open(&ds, data_s, &o, &d))
        goto fail;
    fs_eval_result r;
    double t0 = fs_now_sec();
    if (fs_evaluate(&r, m, ds, NULL, 0, (int)batch, &d))
        goto fail;
    double secs = fs_now_sec() - t0;
    int labeled = ds->labels != NULL;
    double acc = labeled && r.n ? (double)r.correct / (double)r.n : 0;
    double loss = labeled && r.n ? r.loss_sum / (double)r.n : 0;
    if (json) {
        json_t *rep = json_pack("{s:s,s:s,s:I,s:b,s:f}", "model", model_s, "data", data_s, "n",
                              (json_int_t)r.n, "labeled", labeled, "seconds", secs);
        if (labeled) {
            json_object_set_new(rep, "accuracy", json_real(acc));
            json_object_set_new(rep, "loss", json_real(loss));
            json_object_set_new(rep, "correct", json_integer((json_int_t)r.correct));
            json_t *pc = json_array();
            for (int k = 0; k < ds->num_classes && k < r.num_classes; k++)
                json_array_append_new(
                    pc, json_pack("{s:s,s:I,s:f}", "class", ds->class_names ? ds->class_names[k] : "",
                                  "n", (json_int_t)r.class_n[k], "accuracy",
                                  r.class_n[k] ? (double)r.class_correct[k] / (double)r.class_n[k]
                                               : 0.0));
            json_object_set_new(rep, "per_class", pc);
        }
        char *text = json_dumps(rep, JSON_COMPACT);
        puts(text ? text : "{}");
        free(text);
        json_decref(rep);
    } else {
        printf("model     %s\ndata      %s (%lld images)\n", model_s, data_s, (long long)r.n);
        if (labeled) {
            printf("accuracy  %.2f%% (%lld/%lld)\nloss      %.4f\n", 100 * acc,
                   (long long)r.correct, (long long)r.n, loss);
            printf("per class:\n");
            for (int k = 0; k < ds->num_classes && k < r.num_classes; k++)
                printf("  %-12s %6.2f%%  (%lld)\n", ds->class_names ? ds->class_names[k] : "",
                       r.class_n[k] ? 100.0 * (double)r.class_correct[k] / (double)r.class_n[k] : 0,
                       (long long)r.class_n[k]);
        } else {
            printf("(unlabeled: no accuracy)\n");
        }
        printf("time      %.2f s (%.0f images/s)\n", secs, (double)r.n / secs);
    }
    status = 0;
    goto done;
fail:
    fs_cli_fail(cmd, 1, "%s", fs_diag_text(&d, d.code));
done:
    fs_model_free(m);
    fs_dataset_free(ds);
    return status;
}
