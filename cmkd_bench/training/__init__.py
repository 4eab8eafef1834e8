"""Training: one run, from its configuration to its record.

    config            RunConfig: the validated settings that make the run id
    execution         how a run executes beyond what it computes (--compile, --channels-last, autocast)
    metrics           top-1 and mIoU, accumulated over batches
    engine            the loop: batches -> teacher and student -> the method's named losses -> optimiser; evaluation
    teacher_outputs   a frozen teacher's outputs computed once per run and cached
    tracking          --logger tensorboard | wandb
    runner            train-or-load the teacher, build the student and the method, train, write the record
"""
