/*
 * report.c — JSON report and SVG plot of a compression run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_report.h"

static double ratio(int64_t a, int64_t b)
{
    return b > 0 ? (double)a / (double)b : 0.0;
}

static json_t *eval_json(const fs_report_eval *e)
{
    if (!e->have)
        return json_null();
    return json_pack("{s:I,s:f,s:f,s:I,s:I}", "n", (json_int_t)e->n, "accuracy",
                     ratio(e->correct, e->n), "agreement", ratio(e->agree, e->n), "correct",
                     (json_int_t)e->correct, "agree", (json_int_t)e->agree);
}

json_t *fs_report_json(const fs_pipeline_config *c, const fs_pipeline_output *o,
                       const char *teacher_path, const fs_report_eval *teacher_eval,
                       const fs_report_model *models)
{
    json_t *root = json_object();
    json_t *methods = json_array();
    static const char *mnames[] = {"drop-blocks", "prune-channels", "lowrank", "nm", "int8"};
    for (int i = 0; i < 5; i++)
        if (c->methods & (1 << i))
            json_array_append_new(methods, json_string(mnames[i]));
    json_object_set_new(root, "methods", methods);
    json_object_set_new(root, "recover", json_string(fs_recover_kind_name(c->recover)));
    json_object_set_new(root, "target_kind", json_string(fs_target_kind_name(c->target_kind)));
    json_object_set_new(root, "recovery",
                        json_pack("{s:I,s:i,s:f,s:f,s:f,s:s}", "iterations",
                                  (json_int_t)c->recovery.iterations, "batch", c->recovery.batch,
                                  "lr", (double)c->recovery.lr, "momentum",
                                  (double)c->recovery.momentum, "weight_decay",
                                  (double)c->recovery.weight_decay, "bn",
                                  c->recovery.mode == FS_MODE_EVAL ? "frozen" : "train"));
    /* FedSGD (coordinator-side optimizer) or FedAvg (E local steps at every site per round) */
    json_t *rec = json_object_get(root, "recovery");
    json_object_set_new(rec, "algorithm",
                        json_string(c->recovery.local_steps > 0 ? "fedavg" : "fedsgd"));
    json_object_set_new(rec, "local_steps", json_integer(c->recovery.local_steps));
    if (c->recovery.local_steps > 0)
        json_object_set_new(rec, "server_lr",
                            json_real(c->recovery.server_lr > 0 ? c->recovery.server_lr : 1.0));
    json_object_set_new(root, "samples", json_integer((json_int_t)o->on_source.n));
    json_object_set_new(root, "teacher",
                        json_pack("{s:s?,s:I,s:I,s:f,s:f,s:o,s:f}", "path", teacher_path, "params",
                                  (json_int_t)o->params, "flops", (json_int_t)o->flops,
                                  "latency_b1_ms", o->latency_b1 * 1e3, "latency_b64_ms",
                                  o->latency_b64 * 1e3, "eval", eval_json(teacher_eval),
                                  "accuracy", teacher_eval->have
                                                  ? ratio(teacher_eval->correct, teacher_eval->n)
                                                  : 0.0));
    json_t *scores = json_array();
    for (int i = 0; i < o->n_scores; i++) {
        const fs_block_score *s = &o->scores[i];
        json_array_append_new(scores, json_pack("{s:s,s:f,s:f,s:f,s:f,s:b}", "block", s->name,
                                                "recoverability", s->recoverability,
                                                "loss_before", s->loss_before,
                                                "latency_saved_pct", s->latency_saved_pct,
                                                "score", s->score, "diverged", s->diverged));
    }
    json_object_set_new(root, "block_scores", scores);
    json_t *arr = json_array();
    for (int i = 0; i < o->n_results; i++) {
        const fs_pipeline_result *r = &o->results[i];
        json_t *dropped = json_array();
        for (int k = 0; k < r->n_dropped; k++)
            json_array_append_new(dropped, json_string(r->dropped[k]));
        json_t *m = json_pack(
            "{s:f,s:s?,s:I,s:o,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:o,s:f}", "target",
            (double)r->target, "path", models[i].path, "bytes", (json_int_t)models[i].bytes,
            "dropped", dropped, "params", (json_int_t)r->params, "flops", (json_int_t)r->flops,
            "latency_b1_ms", r->latency_b1 * 1e3, "latency_b64_ms", r->latency_b64 * 1e3,
            "latency_ratio", o->latency_b64 > 0 ? r->latency_b64 / o->latency_b64 : 0.0,
            "objective_before", r->objective_before, "objective_after", r->objective_after,
            "agreement_on_samples", ratio(r->on_source.agree, r->on_source.n), "eval",
            eval_json(&models[i].eval), "accuracy",
            models[i].eval.have ? ratio(models[i].eval.correct, models[i].eval.n) : 0.0);
        /* prune-channels: width per layer / residual stream; lowrank: rank per layer */
        for (int rank = 0; rank <= 1; rank++) {
            json_t *ch = json_array();
            for (int k = 0; k < r->n_changes; k++)
                if (r->changes[k].rank == rank)
                    json_array_append_new(ch, json_pack("{s:s,s:i,s:i}", "layer",
                                                        r->changes[k].name, "before",
                                                        r->changes[k].before, "after",
                                                        r->changes[k].after));
            if (json_array_size(ch))
                json_object_set_new(m, rank ? "ranks" : "widths", ch);
            else
                json_decref(ch);
        }
        json_array_append_new(arr, m);
    }
    json_object_set_new(root, "models", arr);
    return root;
}

char *fs_report_svg(const fs_pipeline_output *o, const fs_report_eval *teacher_eval,
                    const fs_report_model *models)
{
    const int W = 640, H = 420, L = 70, R = 30, T = 40, B = 60;
    int use_acc = teacher_eval->have && teacher_eval->n > 0;
    double xs[FS_MAX_TARGETS + 1], ys[FS_MAX_TARGETS + 1];
    int n = 0;
    xs[n] = o->latency_b64 * 1e3;
    ys[n++] = use_acc ? ratio(teacher_eval->correct, teacher_eval->n) * 100 : 100.0;
    for (int i = 0; i < o->n_results; i++) {
        xs[n] = o->results[i].latency_b64 * 1e3;
        ys[n++] = use_acc ? ratio(models[i].eval.correct, models[i].eval.n) * 100
                          : ratio(o->results[i].on_source.agree, o->results[i].on_source.n) * 100;
    }
    double x0 = 0, x1 = 0, y0 = 100, y1 = 0;
    for (int i = 0; i < n; i++) {
        if (xs[i] > x1)
            x1 = xs[i];
        if (ys[i] < y0)
            y0 = ys[i];
        if (ys[i] > y1)
            y1 = ys[i];
    }
    x1 *= 1.1;
    if (x1 <= 0)
        x1 = 1;
    y0 = y0 - 2 < 0 ? 0 : y0 - 2;
    y1 = y1 + 1 > 100 ? 100 : y1 + 1;
    if (y1 - y0 < 1)
        y1 = y0 + 1;
    size_t cap = 16384;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t p = 0;
#define PUT(...) p += (size_t)snprintf(s + p, p < cap ? cap - p : 0, __VA_ARGS__)
#define X(v) (L + (v - x0) / (x1 - x0) * (W - L - R))
#define Y(v) (H - B - (v - y0) / (y1 - y0) * (H - T - B))
    PUT("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
        "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    PUT("<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    PUT("<text x=\"%d\" y=\"22\" font-size=\"15\">%s against latency (batch 64)</text>\n", L,
        use_acc ? "Test accuracy" : "Agreement with the teacher");
    PUT("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, H - B, W - R,
        H - B);
    PUT("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, T, L, H - B);
    for (int k = 0; k <= 4; k++) {
        double xv = x0 + (x1 - x0) * k / 4, yv = y0 + (y1 - y0) * k / 4;
        PUT("<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.1f</text>\n", X(xv), H - B + 18,
            xv);
        PUT("<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", L - 6, Y(yv) + 4, yv);
    }
    PUT("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">latency, ms per batch of 64</text>\n",
        (L + W - R) / 2, H - 18);
    PUT("<text x=\"16\" y=\"%d\" transform=\"rotate(-90 16 %d)\" text-anchor=\"middle\">%s, "
        "%%</text>\n", (T + H - B) / 2, (T + H - B) / 2, use_acc ? "accuracy" : "agreement");
    if (n > 2) {
        PUT("<polyline fill=\"none\" stroke=\"#3a6fb0\" points=\"");
        for (int i = 1; i < n; i++)
            PUT("%.1f,%.1f ", X(xs[i]), Y(ys[i]));
        PUT("\"/>\n");
    }
    for (int i = 1; i < n; i++)
        PUT("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#3a6fb0\"><title>target %.2f: "
            "%.2f%%, %.2f ms</title></circle>\n", X(xs[i]), Y(ys[i]),
            (double)o->results[i - 1].target, ys[i], xs[i]);
    PUT("<rect x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\" fill=\"#c0392b\"/>\n", X(xs[0]) - 4.5,
        Y(ys[0]) - 4.5);
    PUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">teacher</text>\n", X(xs[0]) - 8,
        Y(ys[0]) - 8);
    PUT("</svg>\n");
#undef PUT
#undef X
#undef Y
    if (p >= cap) {
        free(s);
        return NULL;
    }
    return s;
}
