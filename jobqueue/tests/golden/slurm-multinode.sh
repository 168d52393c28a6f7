#!/usr/bin/env bash

#SBATCH -J rdask-worker
#SBATCH -n 4
#SBATCH -N 4
#SBATCH --cpus-per-task=32
#SBATCH --mem=94G
#SBATCH -t 01:30:00
#SBATCH --gres=gpu:1

srun -N 4 -n 4 --cpus-per-task=32 /opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 32 --death-timeout 60 --lifetime 5100 --lifetime-stagger 270

