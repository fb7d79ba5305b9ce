/*
 * fs_report.h — the results of a compression run as a JSON report and an SVG plot of accuracy
 * against latency (the teacher marked). Pure text generation: callers write the files.
 */
#ifndef FS_REPORT_H
#define FS_REPORT_H

#include <jansson.h>

#include "fs_pipeline.h"

/* Measurements of one model on an evaluation set (test accuracy needs labels). */
typedef struct {
    int have;                   /* 0: no evaluation set */
    int64_t n, correct, agree;
    double loss_sum;
} fs_report_eval;

typedef struct {
    const char *path;           /* where the model was written, or NULL */
    int64_t bytes;              /* size on disk */
    fs_report_eval eval;
} fs_report_model;

/* returns owned (json_decref). teacher_eval/models[i].eval may have have == 0. */
json_t *fs_report_json(const fs_pipeline_config *c, const fs_pipeline_output *o,
                       const char *teacher_path, const fs_report_eval *teacher_eval,
                       const fs_report_model *models);
/* returns owned (free()): an SVG plot of accuracy (or agreement) against batch-64 latency. */
char *fs_report_svg(const fs_pipeline_output *o, const fs_report_eval *teacher_eval,
                    const fs_report_model *models);

#endif
