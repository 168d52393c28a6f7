#!/usr/bin/env bash

#SBATCH -J rdask-worker
#SBATCH -e /scratch/logs/rdask-worker-%J.err
#SBATCH -o /scratch/logs/rdask-worker-%J.out
#SBATCH -p gpu
#SBATCH -n 1
#SBATCH -N 1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH -t 36:00:00
#SBATCH --gres=gpu:2
#SBATCH --array=0-9
#SBATCH --exclusive
module load gcc
export OMP_NUM_THREADS=1
export GREETING='it'"'"'s $HOME'
for i in $(seq 4); do /opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 4 --death-timeout 120 --local-directory '/tmp/rdask dir' --lifetime 55m --interface ib0 --lifetime 129300 --lifetime-stagger 300 & done
wait
echo done
date
