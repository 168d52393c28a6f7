#!/usr/bin/env bash

#BSUB -J rdask-worker
#BSUB -n 8
#BSUB -R "span[hosts=1]"
#BSUB -W 00:30

/opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 8 --death-timeout 60 --lifetime 1620 --lifetime-stagger 90

