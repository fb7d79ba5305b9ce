/*
 * cmd_compress.c — `fedslim compress`: few-shot compression on one machine. Samples a few-shot set
 * from --data, runs the compression pipeline on a local data source, writes the model(s), a JSON
 * report and (for a family) an SVG plot, and prints a table per output model.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_internal.h"
#include "fs_cli.h"
#include "fs_local.h"
#include "fs_pipeline.h"
#include "fs_report.h"

static const char USAGE[] =
    "usage: fedslim compress --model T.safetensors --data SPEC --shots N -o OUT.safetensors\n"
    "       [--per-class] [--seed S] [--methods M[,M...] (drop-blocks)]\n"
    "       [--recover mimic|kd|ce|bn|none]\n"
    "       [--target latency=0.75] [--family 0.9,0.8,0.7] [--eval SPEC] [--report R.json]\n"
    "       [--iterations N (2000)] [--score-iterations N (300)] [--batch N (64)]\n"
    "       [--lr X (0.02; ce 1e-4)]\n"
    "       [--bn frozen|train] [--augment PAD (2)] [--threads N] [--drop layer1.1,...]\n"
    "       [--calibration minmax|percentile|mse (percentile)]   (int8)\n"
    "       [--momentum X (0.9)] [--local-steps E (0)] [--server-lr X (1)]\n"
    "  --shots N        few-shot sample of N images in total (PRACTISE's rule), or N per class\n"
    "                   with --per-class; 0 = every image of --data\n"
    "  --methods        drop-blocks, prune-channels, lowrank (combined: applied in that order,\n"
    "                   sharing the target), then nm and/or int8 on the result\n"
    "  --drop BLOCKS    drop exactly these blocks (no scoring; one model)\n"
    "  --local-steps E  recovery by FedAvg rounds of E local SGD steps (0 = FedSGD), as a job's\n"
    "                   local_steps: the one-site reference of a federated FedAvg job\n";

typedef struct {
    int tty;
    char last_phase[64];
} progress_state;

static void progress(void *ud, const char *phase, long it, long total, double loss, double eta)
{
    progress_state *ps = ud;
    int s = (int)(eta + 0.5);
    if (ps->tty && strcmp(ps->last_phase, phase) && ps->last_phase[0])
        fputc('\n', stderr);
    snprintf(ps->last_phase, sizeof ps->last_phase, "%s", phase);
    fprintf(stderr, "%s[%s] %ld/%ld  loss %.5f  ETA %d:%02d:%02d%s", ps->tty ? "\r" : "", phase,
            it, total, loss, s / 3600, s / 60 % 60, s % 60, ps->tty ? "   " : "\n");
    fflush(stderr);
}

static int eval_on(fs_report_eval *e, fs_model *teacher, fs_model *m, const fs_dataset *ds,
                   fs_diag *d)
{
    memset(e, 0, sizeof *e);
    if (!ds)
        return 0;
    fs_local *L = NULL;
    int rc = fs_local_create(&L, teacher, ds, 256, 0, d);
    if (rc)
        return rc;
    fs_eval_sum s;
    rc = fs_local_evaluate(L, m, &s, d);
    fs_local_free(L);
    if (rc)
        return rc;
    e->have = 1;
    e->n = s.n;
    e->correct = s.correct;
    e->agree = s.agree;
    e->loss_sum = s.loss_sum;
    return 0;
}

static void out_name(char *buf, size_t n, const char *out, int family, float target)
{
    if (!family) {
        snprintf(buf, n, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.');
    const char *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash))
        dot = out + strlen(out);
    snprintf(buf, n, "%.*s-%.2f%s", (int)(dot - out), out, (double)target, dot);
}

static int write_text(const char *path, const char *text, fs_diag *d)
{
    return fs_write_file_atomic(path, text, strlen(text), d);
}

int cmd_compress(int argc, char **argv)
{
    const char *cmd = "compress";
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},    {"data", required_argument, 0, 'd'},
        {"shots", required_argument, 0, 'n'},    {"per-class", no_argument, 0, 'P'},
        {"seed", required_argument, 0, 's'},     {"methods", required_argument, 0, 'M'},
        {"recover", required_argument, 0, 'r'},  {"target", required_argument, 0, 'T'},
        {"family", required_argument, 0, 'f'},   {"eval", required_argument, 0, 'e'},
        {"report", required_argument, 0, 'R'},   {"iterations", required_argument, 0, 'i'},
        {"score-iterations", required_argument, 0, 'I'}, {"batch", required_argument, 0, 'b'},
        {"lr", required_argument, 0, 'l'},       {"bn", required_argument, 0, 'B'},
        {"augment", required_argument, 0, 'A'},  {"threads", required_argument, 0, 't'},
        {"output", required_argument, 0, 'o'},   {"help", no_argument, 0, 'h'},
        {"drop", required_argument, 0, 'D'},
        {"calibration", required_argument, 0, 'C'},
        {"momentum", required_argument, 0, 'u'}, {"local-steps", required_argument, 0, 'L'},
        {"server-lr", required_argument, 0, 'S'},
        {0, 0, 0, 0}};
    const char *model_s = NULL, *data_s = NULL, *eval_s = NULL, *out_s = NULL, *report_s = NULL,
               *family_s = NULL;
    long shots = -1, seed = 1, threads = 0, pad = 2, batch = 64, iters = 2000, siters = 300;
    double lr = -1;   /* not given: fs_recover_default_lr */
    double momentum = 0.9, server_lr = 1.0;
    long local_steps = 0;
    int per_class = 0, c, rc;
    fs_diag d = {0};
    fs_pipeline_config pc;
    fs_pipeline_defaults(&pc);
    int bn_train = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_s = optarg; break;
        case 'd': data_s = optarg; break;
        case 'e': eval_s = optarg; break;
        case 'o': out_s = optarg; break;
        case 'R': report_s = optarg; break;
        case 'f': family_s = optarg; break;
        case 'P': per_class = 1; break;
        case 'D':
            if (fs_pipeline_parse_drop(&pc, optarg, &d))
                return fs_cli_fail(cmd, 2, "--%s", d.msg);
            break;
        case 'M':
            if (fs_pipeline_parse_methods(&pc.methods, optarg, &d))
                return fs_cli_fail(cmd, 2, "--%s", d.msg);
            break;
        case 'r':
            if (fs_pipeline_parse_recover(&pc.recover, optarg, &d))
                return fs_cli_fail(cmd, 2, "--%s", d.msg);
            break;
        case 'T':
            if (fs_pipeline_parse_target(&pc, optarg, &d))
                return fs_cli_fail(cmd, 2, "--%s", d.msg);
            break;
        case 'C':
            if (fs_calib_parse(&pc.quant.method, optarg, &d))
                return fs_cli_fail(cmd, 2, "--%s", d.msg);
            break;
        case 'B':
            if (strcmp(optarg, "frozen") && strcmp(optarg, "train"))
                return fs_cli_fail(cmd, 2, "--bn '%s': expected frozen or train", optarg);
            bn_train = !strcmp(optarg, "train");
            break;
        case 'n': if ((rc = fs_cli_int(cmd, "--shots", optarg, 0, 1 << 30, &shots))) return rc; break;
        case 's': if ((rc = fs_cli_int(cmd, "--seed", optarg, 0, 1L << 62, &seed))) return rc; break;
        case 't': if ((rc = fs_cli_int(cmd, "--threads", optarg, 0, 1024, &threads))) return rc; break;
        case 'A': if ((rc = fs_cli_int(cmd, "--augment", optarg, 0, 64, &pad))) return rc; break;
        case 'b': if ((rc = fs_cli_int(cmd, "--batch", optarg, 0, 4096, &batch))) return rc; break;
        case 'i': if ((rc = fs_cli_int(cmd, "--iterations", optarg, 0, 10000000, &iters))) return rc; break;
        case 'I': if ((rc = fs_cli_int(cmd, "--score-iterations", optarg, 0, 10000000, &siters))) return rc; break;
        case 'l': if ((rc = fs_cli_float(cmd, "--lr", optarg, 0, 10, &lr))) return rc; break;
        case 'u': if ((rc = fs_cli_float(cmd, "--momentum", optarg, 0, 1, &momentum))) return rc; break;
        case 'L': if ((rc = fs_cli_int(cmd, "--local-steps", optarg, 0, 1000000, &local_steps))) return rc; break;
        case 'S': if ((rc = fs_cli_float(cmd, "--server-lr", optarg, 1e-6, 100, &server_lr))) return rc; break;
        case 'h': fputs(USAGE, stdout); return 0;
        default: fputs(USAGE, stderr); return 2;
        }
    }
    if (!model_s || !data_s || !out_s || shots < 0 || optind != argc) {
        fputs(USAGE, stderr);
        return fs_cli_fail(cmd, 2, "--model, --data, --shots and -o are required");
    }
    if (family_s && fs_pipeline_parse_family(&pc, family_s, &d))
        return fs_cli_fail(cmd, 2, "--%s", d.msg);
    pc.recovery.iterations = iters;
    pc.recovery.batch = (int)batch;
    pc.recovery.lr = lr < 0 ? fs_recover_default_lr(pc.recover) : (float)lr;
    pc.recovery.seed = (uint64_t)seed;
    pc.recovery.pad = (int)pad;
    pc.recovery.hflip = pad > 0;
    pc.recovery.mode = bn_train ? FS_MODE_TRAIN_NOSTATS : FS_MODE_EVAL;
    pc.recovery.momentum = (float)momentum;
    pc.recovery.local_steps = (int)local_steps;
    pc.recovery.server_lr = (float)server_lr;
    pc.practise.iterations = siters;
    pc.practise.batch = (int)batch;
    pc.practise.seed = (uint64_t)seed;
    fs_threads_configure((int)threads);

    fs_model *teacher = NULL;
    fs_dataset *all = NULL, *fewshot = NULL, *test = NULL;
    fs_local *L = NULL;
    fs_source *src = NULL;
    int32_t *idx = NULL;
    int n_idx = 0, status = 1;
    fs_pipeline_output *out = calloc(1, sizeof *out);
    fs_report_model models[FS_MAX_TARGETS];
    memset(models, 0, sizeof models);
    char paths[FS_MAX_TARGETS][4096];
    json_t *report = NULL;
    char *svg = NULL;
    if (!out) {
        fs_diag_set(&d, FS_ENOMEM, "out of memory");
        goto fail;
    }
    if (fs_model_load(&teacher, model_s, &d))
        goto fail;
    fs_data_opts o = {.channels = teacher->arch.in_c, .height = teacher->arch.in_h,
                      .width = teacher->arch.in_w, .resize = 1};
    if (fs_dataset_open(&all, data_s, &o, &d))
        goto fail;
    if (eval_s && fs_dataset_open(&test, eval_s, &o, &d))
        goto fail;
    if (shots == 0) {
        n_idx = all->n;
    } else if (per_class) {
        if (fs_sample_per_class(&idx, &n_idx, all, (int)shots, (uint64_t)seed, &d))
            goto fail;
    } else {
        if (shots > all->n) {
            fs_diag_set(&d, FS_EINVAL, "--shots %ld: %s has only %d images", shots, data_s, all->n);
            goto fail;
        }
        if (fs_sample_total(&idx, all, (int)shots, (uint64_t)seed, &d))
            goto fail;
        n_idx = (int)shots;
    }
    if (idx) {
        if (fs_dataset_subset(&fewshot, all, idx, n_idx, &d))
            goto fail;
    }
    const fs_dataset *train = fewshot ? fewshot : all;
    fprintf(stderr, "fedslim compress: teacher %s, %d few-shot images from %s%s, %s\n", model_s,
            train->n, data_s, train->labels ? "" : " (unlabeled)", fs_threads_describe());
    if (fs_local_create(&L, teacher, train, 64 > batch ? 64 : (int)batch, 0, &d))
        goto fail;
    if (fs_source_local(&src, L, &d))
        goto fail;
    L = NULL;   /* owned by src */
    progress_state ps = {.tty = isatty(2)};
    if (fs_pipeline_run(&pc, teacher, src, progress, &ps, out, &d))
        goto fail;
    if (ps.tty)
        fputc('\n', stderr);

    fs_report_eval teval;
    if (eval_on(&teval, teacher, teacher, test, &d))
        goto fail;
    for (int i = 0; i < out->n_results; i++) {
        out_name(paths[i], sizeof paths[i], out_s, out->n_results > 1 || family_s != NULL,
                 out->results[i].target);
        if (fs_model_save(out->results[i].model, paths[i], &d))
            goto fail;
        struct stat st;
        models[i].path = paths[i];
        models[i].bytes = stat(paths[i], &st) == 0 ? (int64_t)st.st_size : -1;
        if (eval_on(&models[i].eval, teacher, out->results[i].model, test, &d))
            goto fail;
    }
    struct stat tst;
    int64_t tbytes = stat(model_s, &tst) == 0 ? (int64_t)tst.st_size : -1;
    printf("%-28s %8s %8s %10s %9s %10s %11s %10s\n", "model", "acc %", "agree %", "params",
           "MFLOPs", "lat b1 ms", "lat b64 ms", "bytes");
    char tacc[16] = "-";
    if (teval.have && teval.n)
        snprintf(tacc, sizeof tacc, "%.2f", 100.0 * (double)teval.correct / (double)teval.n);
    printf("%-28s %8s %8s %10lld %9.2f %10.3f %11.2f %10lld\n", "teacher", tacc, "100.00",
           (long long)out->params, (double)out->flops / 1e6, out->latency_b1 * 1e3,
           out->latency_b64 * 1e3, (long long)tbytes);
    for (int i = 0; i < out->n_results; i++) {
        const fs_pipeline_result *r = &out->results[i];
        const fs_report_eval *e = &models[i].eval;
        char acc[16] = "-", agree[16];
        if (e->have && e->n)
            snprintf(acc, sizeof acc, "%.2f", 100.0 * (double)e->correct / (double)e->n);
        double ag = e->have && e->n ? (double)e->agree / (double)e->n
                                    : (double)r->on_source.agree / (double)r->on_source.n;
        snprintf(agree, sizeof agree, "%.2f", 100.0 * ag);
        char label[64];
        int n_ch = 0, n_lr = 0;
        for (int k = 0; k < r->n_changes; k++) {
            n_lr += r->changes[k].rank;
            n_ch += r->changes[k].rank ? 0 : r->changes[k].before - r->changes[k].after;
        }
        int len = snprintf(label, sizeof label, "%s=%.2f (", fs_target_kind_name(pc.target_kind),
                           (double)r->target);
        const char *sep = "";
        if (r->n_dropped || !(pc.methods & (FS_METHOD_PRUNE_CHANNELS | FS_METHOD_LOWRANK))) {
            len += snprintf(label + len, sizeof label - (size_t)len, "-%d blocks", r->n_dropped);
            sep = ", ";
        }
        if (pc.methods & FS_METHOD_PRUNE_CHANNELS) {
            len += snprintf(label + len, sizeof label - (size_t)len, "%s-%d ch", sep, n_ch);
            sep = ", ";
        }
        if (pc.methods & FS_METHOD_LOWRANK)
            len += snprintf(label + len, sizeof label - (size_t)len, "%s%d low-rank", sep, n_lr);
        snprintf(label + len, sizeof label - (size_t)len, ")");
        printf("%-28s %8s %8s %10lld %9.2f %10.3f %11.2f %10lld\n", label, acc, agree,
               (long long)r->params, (double)r->flops / 1e6, r->latency_b1 * 1e3,
               r->latency_b64 * 1e3, (long long)models[i].bytes);
    }
    report = fs_report_json(&pc, out, model_s, &teval, models);
    char rpath[4096];
    if (report_s)
        snprintf(rpath, sizeof rpath, "%s", report_s);
    else
        snprintf(rpath, sizeof rpath, "%s.json", out_s);
    char *text = json_dumps(report, JSON_INDENT(2));
    int wrc = text ? write_text(rpath, text, &d) : fs_diag_set(&d, FS_ENOMEM, "out of memory");
    free(text);
    if (wrc)
        goto fail;
    fprintf(stderr, "fedslim compress: report %s\n", rpath);
    if (out->n_results > 1 || family_s) {
        svg = fs_report_svg(out, &teval, models);
        char spath[4096];
        size_t rl = strlen(rpath);
        if (rl > 5 && !strcmp(rpath + rl - 5, ".json"))
            rl -= 5;
        snprintf(spath, sizeof spath, "%.*s.svg", (int)rl, rpath);
        if (!svg || write_text(spath, svg, &d))
            goto fail;
        fprintf(stderr, "fedslim compress: plot %s\n", spath);
    }
    status = 0;
    goto done;
fail:
    fs_cli_fail(cmd, 1, "%s", fs_diag_text(&d, d.code));
done:
    free(svg);
    json_decref(report);
    if (out)
        fs_pipeline_output_free(out);
    free(out);
    fs_source_free(src);
    fs_local_free(L);
    fs_model_free(teacher);
    fs_dataset_free(all);
    fs_dataset_free(fewshot);
    fs_dataset_free(test);
    free(idx);
    return status;
}
